export const css = String.raw`
:host { display: block; color: #e4eaf1; font: 13px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
* { box-sizing: border-box; }
.bar { display: flex; align-items: center; gap: 12px; margin: 0 0 12px; }
.bar h2 { margin: 0; font-size: 15px; letter-spacing: .04em; text-transform: uppercase; color: #8593a5; }
.bar .spacer { flex: 1; }
.bar select { background: #141b24; color: inherit; border: 1px solid #232d3a; border-radius: 6px; padding: 3px 6px; }
.sport { margin: 0 0 18px; }
.sport h3 { margin: 0 0 6px; font-size: 13px; text-transform: capitalize; color: #f2b233; }
.row { display: grid; grid-template-columns: minmax(180px, 1fr) 92px auto; gap: 12px; align-items: center;
  padding: 8px 10px; background: #141b24; border: 1px solid #232d3a; border-radius: 8px; margin: 0 0 6px; }
.teams { display: flex; flex-direction: column; min-width: 0; }
.teams .name { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.teams .comp { color: #a3b0c0; font-size: 11px; }
.state { text-align: center; font-variant-numeric: tabular-nums; }
.state .score { font-weight: 700; font-size: 15px; }
.state .clock { color: #ff7a80; font-size: 11px; }
.state .pre { color: #8593a5; font-size: 11px; }
.state .ended { color: #8593a5; font-size: 11px; font-weight: 600; }
.market { position: relative; display: flex; gap: 6px; }
.sel { width: 74px; height: 40px; border-radius: 6px; border: 1px solid #244566; background: #1d3853; color: #cfe7ff;
  cursor: pointer; display: flex; flex-direction: column; align-items: center; justify-content: center; padding: 0;
  transition: background-color .6s ease; font: inherit; }
.sel:hover:not(:disabled) { background: #244566; }
.sel:disabled { cursor: not-allowed; opacity: .55; }
.sel .lbl { font-size: 10px; color: #8fb3d6; max-width: 68px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.sel .px { font-weight: 700; font-variant-numeric: tabular-nums; }
.sel.up { background: #5a1f26; border-color: #d1434f; transition: none; }
.sel.down { background: #173f2a; border-color: #2ea05a; transition: none; }
.sel.winner { background: #1f4d2e; border-color: #3fb968; color: #d6ffe2; }
.sel.loser, .sel.void, .sel.removed { opacity: .4; }
.overlay { position: absolute; inset: -2px; border-radius: 7px; background: rgba(13,18,24,.82); border: 1px dashed #f0b429;
  display: flex; align-items: center; justify-content: center; gap: 6px; color: #f0b429; font-weight: 600; font-size: 12px; }
.overlay.syncing { border-color: #8593a5; color: #8593a5; }
.result { font-size: 11px; color: #3fb968; font-weight: 600; margin-left: 6px; align-self: center; }
.empty { color: #a3b0c0; padding: 8px 0; }
.sel .dir, .ladder .dir { display: inline-block; width: 1em; margin-left: 2px; font-size: 10px; }
.sel.up .dir, .ladder [data-move="up"] .dir { color: #ff9aa2; }
.sel.down .dir, .ladder [data-move="down"] .dir { color: #7fe0a0; }
.sr { position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; overflow: hidden; clip: rect(0 0 0 0);
  white-space: nowrap; border: 0; }
button:focus-visible, select:focus-visible { outline: 2px solid #f2b233; outline-offset: 2px; }
.row:has(.ladder) { grid-template-columns: minmax(160px, 1fr) 92px; }
.row:has(.ladder) > div:last-child { grid-column: 1 / -1; }
.ladder { margin: 4px 0 2px; }
.ladder-head { display: flex; align-items: center; gap: 10px; margin: 0 0 6px; }
.ladder-name { font-weight: 600; }
.ladder .spacer { flex: 1; }
.matched { color: #a3b0c0; font-size: 12px; font-variant-numeric: tabular-nums; }
.state-badge { font-size: 11px; font-weight: 600; padding: 1px 8px; border-radius: 8px; border: 1px dashed #f0b429; color: #f0b429; }
.ladder[data-status="settled"] .state-badge, .ladder[data-status="voided"] .state-badge { border-color: #3fb968; color: #7fe0a0; }
.ladder table { width: 100%; border-collapse: separate; border-spacing: 2px; table-layout: fixed; }
.ladder th { font-size: 11px; font-weight: 600; color: #a3b0c0; text-align: center; padding: 2px 4px; }
.ladder thead th:first-child { text-align: left; width: 28%; }
.ladder .runner-name { text-align: left; color: #e4eaf1; font-size: 13px; font-weight: 500; overflow: hidden; }
.ladder .runner-name .nm { display: block; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.ladder .note { display: block; font-size: 11px; color: #f0b429; }
.ladder .note.winner { color: #7fe0a0; }
.ladder .note.loser, .ladder .note.void { color: #a3b0c0; }
.ladder .cell { position: relative; height: 38px; padding: 0; border-radius: 4px; text-align: center; overflow: hidden;
  font-variant-numeric: tabular-nums; }
.ladder .cell.back { background: #16324d; color: #d8ecff; }
.ladder .cell.lay { background: #4a2230; color: #ffe0e6; }
.ladder .cell.best.back { background: #1f4a73; }
.ladder .cell.best.lay { background: #6a2c3f; }
.ladder .cell .bar { position: absolute; left: 0; bottom: 0; height: 3px; background: currentColor; opacity: .55; }
.ladder .cell .p { display: block; font-weight: 700; font-size: 13px; line-height: 18px; }
.ladder .cell .s { display: block; font-size: 10px; line-height: 14px; opacity: .85; }
.ladder .cell .pick { all: unset; display: block; width: 100%; height: 100%; cursor: pointer; position: relative; box-sizing: border-box; padding-top: 2px; }
.ladder .cell .pick:disabled { cursor: not-allowed; }
.ladder .cell .pick:focus-visible { outline: 2px solid #f2b233; outline-offset: -2px; }
.ladder .ltp, .ladder .vol { text-align: center; font-variant-numeric: tabular-nums; font-size: 12px; color: #e4eaf1; }
.ladder .vol { color: #a3b0c0; }
.ladder .back-h { color: #8fc7ff; }
.ladder .lay-h { color: #ffb3c1; }
.ladder .runner.removed .nm { text-decoration: line-through; color: #a3b0c0; }
.ladder[data-status="suspended"] .cell, .ladder[data-status="closed"] .cell { opacity: .45; }
`;
