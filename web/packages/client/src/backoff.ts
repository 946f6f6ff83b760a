/** Reconnect delays: "full jitter" exponential backoff, capped. */

export interface BackoffOptions {
  /** First ceiling, in ms (default 500). */
  readonly baseMs?: number;
  /** Largest ceiling, in ms (default 30 000). */
  readonly capMs?: number;
}

export const DEFAULT_BACKOFF: Required<BackoffOptions> = { baseMs: 500, capMs: 30_000 };

/** The ceiling of attempt `attempt` (0-based): `min(cap, base * 2^attempt)`. */
export function backoffCeiling(attempt: number, options: BackoffOptions = {}): number {
  const base = options.baseMs ?? DEFAULT_BACKOFF.baseMs;
  const cap = options.capMs ?? DEFAULT_BACKOFF.capMs;
  // 2^attempt overflows to Infinity long after the cap is reached; min() keeps it finite.
  return Math.min(cap, base * 2 ** Math.max(0, attempt));
}

/**
 * The delay before reconnect attempt `attempt`: uniform in `[0, ceiling)`, so a fleet of
 * clients that lost the same gateway spreads its returns over the whole window.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  return Math.floor(random() * backoffCeiling(attempt, options));
}
