/**
 * Shared identifiers and the data shapes of the CondaTainer REST API.
 *
 * The interfaces mirror the server's JSON exactly (snake_case included) so a
 * response can be used as is, without a mapping layer that could drift.
 */

/** The plugin id; also the key of `schema/plugin.json` in the settings registry. */
export const PLUGIN_ID = 'jupyter-condatainer:plugin';

/** The id of the sidebar widget (also restored by the layout restorer). */
export const PANEL_ID = 'jp-condatainer-panel';

/** Translation domain of every user-visible string. */
export const TRANSLATION_DOMAIN = 'jupyter_condatainer';

/** Schema id of the job events the server emits on jupyter_server's event bus. */
export const JOB_EVENT_SCHEMA_ID =
  'https://events.jupyter.org/jupyter_condatainer/job/v1';

/**
 * How often the panel asks the server's cheap status (a generation of the
 * images, kernels and instances) while it is visible, so changes made by the
 * magic or the CLI show without waiting for a full refresh.
 */
export const STATUS_POLL_MS = 3000;

/** How often jobs are polled when a job runs but the event bus stays silent. */
export const FALLBACK_POLL_MS = 5000;

/** Commands added by this extension. */
export namespace CommandIDs {
  export const openPanel = 'condatainer:open-panel';
  export const refresh = 'condatainer:refresh';
  export const newEnv = 'condatainer:new-env';
  export const openNotebook = 'condatainer:open-notebook';
}

/** Overlay kinds: `.sif` base images, `.sqf` read-only and `.img` writable overlays. */
export type OverlayKind = 'sif' | 'sqf' | 'img';

/** One image or overlay known to the server (`GET overlays`). */
export interface IOverlay {
  /** Module-style name, e.g. `python/3.11`; may contain `/`. */
  name: string;
  kind: OverlayKind;
  path: string;
  /** Size on disk in bytes. */
  size: number;
  /** One-line description (the module's `whatis`). */
  whatis: string;
  /** Free-form notes keyed by topic. */
  notes: { [key: string]: string };
  /** True while a running kernel or instance uses the overlay. */
  in_use: boolean;
  /**
   * Who uses it, in words: its notebooks and kernels, or "another program"
   * (a CondaTainer shell, another server). Absent from older servers.
   */
  in_use_by?: string;
  /** The overlays its kernel mounts, e.g. `python/3.11` then the env. */
  kernel_stack?: string[];
  /** Lines of its `.env` sidecar that were skipped, and why. */
  warnings?: string[];
  /** Name of the kernelspec that runs this overlay, if one is registered. */
  kernelspec: string | null;
  writable: boolean;
}

/** Body of `GET status`. */
export interface IStatus {
  /** Changes whenever an image, a kernelspec or an instance changes. */
  generation: string;
  /** Why no conda channel can be reached, or "" when nothing says so. */
  channel_problem: string;
}

/** Body of the answer of `POST kernelspecs` ("Make kernel…"). */
export interface IMadeKernel {
  kernelspec: string;
  display_name: string;
  /** The whole stack, a Python overlay first when the server added one. */
  overlays: string[];
  /** What the server added or decided, in words (may be empty). */
  note: string;
}

/** A kernel whose stack cannot start now (an image is not found); kept, marked broken. */
export interface IBrokenKernel {
  kernelspec: string;
  display_name: string;
  reason: string;
}

/** Body of `GET overlays`. */
export interface IOverlayList {
  image_dirs: string[];
  overlays: IOverlay[];
  /** Absent from older servers. */
  broken_kernels?: IBrokenKernel[];
}

/** One conda package of an env (`GET overlays/{name}/packages`). */
export interface IPackage {
  name: string;
  version: string;
  build: string;
  channel: string;
}

/** Job life cycle states; the last three are final. */
export type JobState =
  'pending' | 'running' | 'succeeded' | 'failed' | 'cancelled';

/**
 * A background job (`GET jobs/{id}`).
 *
 * Jobs that arrive through the event bus carry `log_tail` instead of `log`,
 * so both are optional here.
 */
export interface IJob {
  id: string;
  /** `create`, `install`, `remove`, … (open-ended on purpose). */
  kind: string;
  /** Name of the overlay the job works on. */
  target: string;
  state: JobState;
  /** Progress from 0 to 1. */
  progress: number;
  message: string;
  log?: string[];
  log_tail?: string[];
  error: string | null;
  /** Creation time, epoch seconds. */
  created: number;
  /** End time, epoch seconds; null while the job has not ended. */
  finished: number | null;
  /**
   * False once stopping halfway could leave a half-changed env (the server
   * then refuses to cancel). Absent from older servers: treat as true.
   */
  cancellable?: boolean;
}

/** Body of `POST overlays`. */
export interface ICreateEnvRequest {
  name: string;
  size_mb: number;
  /** Empty: the server installs its default packages. */
  packages: string[];
  channels: string[];
  register_kernel: boolean;
}

/** True for states after which a job no longer changes. */
export function isFinalState(state: JobState): boolean {
  return state === 'succeeded' || state === 'failed' || state === 'cancelled';
}
