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
.teams .comp { color: #5c6878; font-size: 11px; }
.state { text-align: center; font-variant-numeric: tabular-nums; }
.state .score { font-weight: 700; font-size: 15px; }
.state .clock { color: #e5484d; font-size: 11px; }
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
.empty { color: #5c6878; padding: 8px 0; }
`;
