/**
 * Pure rules for overlays and packages: order, grouping, lookups and
 * filtering. No JupyterLab runtime imports, so they are unit-tested directly.
 */

import type { IOverlay, IPackage, OverlayKind } from './tokens';

/** Display order of the overlay groups. */
const GROUP_ORDER: OverlayKind[] = ['sif', 'sqf', 'img'];

/** Overlays of one kind, as one group of the panel shows them. */
export interface IOverlayGroup {
  kind: OverlayKind;
  overlays: IOverlay[];
}

/** A copy sorted by name. */
export function sortByName(overlays: readonly IOverlay[]): IOverlay[] {
  return [...overlays].sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * Base images, then read-only overlays, then writable envs, each group in
 * the order given; groups without members are left out.
 */
export function groupByKind(overlays: readonly IOverlay[]): IOverlayGroup[] {
  return GROUP_ORDER.map(kind => ({
    kind,
    overlays: overlays.filter(overlay => overlay.kind === kind)
  })).filter(group => group.overlays.length > 0);
}

/**
 * Whether the two lists register different kernelspecs (an env with a
 * kernel was created or deleted), so the launcher's kernels are stale.
 */
export function kernelsDiffer(
  before: readonly IOverlay[],
  after: readonly IOverlay[]
): boolean {
  return kernelKey(before) !== kernelKey(after);
}

/** A comparable summary of which kernelspecs the overlays have. */
function kernelKey(overlays: readonly IOverlay[]): string {
  return overlays
    .map(overlay => overlay.kernelspec ?? '')
    .filter(name => name)
    .sort()
    .join('\n');
}

/** The writable env of that name, if the list has one. */
export function findWritable(
  overlays: readonly IOverlay[] | null,
  name: string
): IOverlay | undefined {
  return overlays?.find(overlay => overlay.name === name && overlay.writable);
}

/** Packages whose name contains the typed text, ignoring case and blanks. */
export function filterPackages(
  packages: readonly IPackage[],
  filter: string
): IPackage[] {
  const needle = filter.trim().toLowerCase();
  return packages.filter(pkg => pkg.name.toLowerCase().includes(needle));
}

/** Whose stack a terminal runs in: a running kernel's, or an overlay's or env's. */
export type TerminalTarget = { kernelId: string } | { overlay: string };

/**
 * The API path that creates a terminal in a stack: in a running kernel's
 * container, or in the stack a kernel on an overlay or env would run.
 */
export function terminalPath(target: TerminalTarget): string {
  return 'kernelId' in target
    ? `kernels/${encodeURIComponent(target.kernelId)}/terminal`
    : `overlays/${encodeURIComponent(target.overlay)}/terminal`;
}

/**
 * Whether a row offers "Terminal": overlays and envs have a stack of their
 * own; a base image is under every stack.
 */
export function offersTerminal(overlay: IOverlay): boolean {
  return overlay.kind !== 'sif';
}
