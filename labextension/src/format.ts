/**
 * Small pure helpers for turning API values into text and user input into
 * API values. No JupyterLab imports, so they stay trivial to test.
 */

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** `1536` → `1.5 KiB`; binary units because overlay sizes are given in MiB. */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes) || bytes < 0) {
    return '';
  }
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1;
  return `${value.toFixed(digits)} ${UNITS[unit]}`;
}

/**
 * Split a user-typed list on commas and white space: `"numpy, scipy>=1.11"`
 * → `["numpy", "scipy>=1.11"]`. Conda specs never contain either separator
 * (`"numpy >=1.2"` must be written `numpy>=1.2`).
 */
export function parseList(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map(item => item.trim())
    .filter(item => item.length > 0);
}

/** Epoch seconds → local time of day, with the date when it is not today. */
export function formatTime(epochSeconds: number): string {
  const date = new Date(epochSeconds * 1000);
  const sameDay = date.toDateString() === new Date().toDateString();
  return sameDay ? date.toLocaleTimeString() : date.toLocaleString();
}

/** Progress 0..1 → whole percent, clamped (servers may overshoot slightly). */
export function percent(progress: number): number {
  if (!Number.isFinite(progress)) {
    return 0;
  }
  return Math.round(Math.min(1, Math.max(0, progress)) * 100);
}
