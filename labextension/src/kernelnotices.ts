/**
 * What the server tells the notebook about a kernel beyond "idle" and "busy":
 * a SLURM job waiting in the queue, its time left, its end by the time limit,
 * a kernel culled for idleness. The server sends these as events of
 * KERNEL_EVENT_SCHEMA_ID on jupyter_server's event bus; this module turns them
 * into notifications, and keeps a countdown running once a job nears its end.
 *
 * The rules (which event says what, how a time left reads) are pure functions
 * so they are tested without JupyterLab.
 */

/** Schema id of the kernel events (server/events/kernel.yaml). */
export const KERNEL_EVENT_SCHEMA_ID =
  'https://events.jupyter.org/jupyter_condatainer/kernel/v1';

/** One kernel event, as the server sends it (snake_case, as on the wire). */
export interface IKernelEvent {
  kernel_id: string;
  event: string;
  message: string;
  job_id?: string;
  end_time?: number | null;
  time_left?: number | null;
}

/** A kernel's notice as `GET /condatainer/api/kernels` lists it. */
export interface IKernelNotice {
  kernel_id: string;
  job_id: string;
  ended: string;
  message: string;
  updated: number;
}

/**
 * The ends (culled, time limit) that happened while no JupyterLab listened,
 * as events to show, leaving out those already seen (`seen` holds
 * {@link seenKey}s). This is how a user who comes back is told why a kernel is gone.
 */
export function missedEnds(
  notices: IKernelNotice[],
  seen: ReadonlySet<string>
): IKernelEvent[] {
  return notices
    .filter(n => n.ended && !seen.has(seenKey(n.kernel_id, n.updated)))
    .map(n => ({
      kernel_id: n.kernel_id,
      event: n.ended,
      message: n.message,
      job_id: n.job_id
    }));
}

/** What identifies one shown end: the kernel and when its notice changed. */
export function seenKey(kernelId: string, updated: number): string {
  return `${kernelId}@${updated}`;
}

/** How an event is shown: the notification's type, and whether a countdown follows it. */
export interface INoticeView {
  type: 'info' | 'warning' | 'error';
  message: string;
  countdown: boolean;
  cancellable: boolean;
}

/** The kernel event in a bus event, or null for any other event. */
export function kernelEvent(
  event: { schema_id?: string } & Record<string, unknown>
): IKernelEvent | null {
  if (event.schema_id !== KERNEL_EVENT_SCHEMA_ID) {
    return null;
  }
  if (typeof event.kernel_id !== 'string' || typeof event.event !== 'string') {
    return null;
  }
  return event as unknown as IKernelEvent;
}

/** `1 h 02 min`, `14 min 59 s`, `42 s`: the time left as a person reads it. */
export function formatLeft(seconds: number): string {
  const total = Math.max(0, Math.floor(seconds));
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const secs = total % 60;
  const pad = (n: number) => String(n).padStart(2, '0');
  if (hours) {
    return `${hours} h ${pad(minutes)} min`;
  }
  if (minutes) {
    return `${minutes} min ${pad(secs)} s`;
  }
  return `${secs} s`;
}

/** The countdown line of a job that ends at `endTime` (epoch seconds). */
export function countdownMessage(
  jobId: string,
  endTime: number,
  nowMs: number
): string {
  const left = endTime - nowMs / 1000;
  return left > 0
    ? `SLURM job ${jobId} ends in ${formatLeft(left)} (its time limit): save your work`
    : `SLURM job ${jobId} has reached its time limit`;
}

/** How each event is shown; null for events that need no notification (`running`). */
export function noticeView(event: IKernelEvent): INoticeView | null {
  switch (event.event) {
    case 'queued':
      return {
        type: 'info',
        message: event.message,
        countdown: false,
        cancellable: true
      };
    case 'walltime-warning':
      return {
        type: 'warning',
        message: event.message,
        countdown: Boolean(event.end_time),
        cancellable: false
      };
    case 'time-limit':
    case 'culled':
    case 'ended':
      return {
        type: 'error',
        message: event.message,
        countdown: false,
        cancellable: false
      };
    case 'start-cancelled':
      return {
        type: 'info',
        message: event.message,
        countdown: false,
        cancellable: false
      };
    default:
      return null;
  }
}
