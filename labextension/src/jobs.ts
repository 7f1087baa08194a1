/**
 * Pure rules for jobs: merging updates from REST answers and bus events,
 * choosing which jobs and log lines the panel shows. No JupyterLab runtime
 * imports, so they are unit-tested directly.
 */

import type { Event } from '@jupyterlab/services';

import { isFinalState, JOB_EVENT_SCHEMA_ID } from './tokens';
import type { IJob } from './tokens';

/** The last `count` lines; none for a count of zero or less. */
export function lastLines(lines: readonly string[], count: number): string[] {
  return count > 0 ? lines.slice(-count) : [];
}

/**
 * Merge an incoming log excerpt into the lines kept so far, without
 * repeating a line both contain, and keep the last `maxLines`.
 *
 * Events and `GET jobs` carry the last few lines of the log, so successive
 * excerpts overlap; a POST answer carries the whole log; a slow REST answer
 * can be older than the events that came before it. The excerpt is aligned
 * with the kept lines where they agree on the most lines (on a tie, the
 * alignment that adds lines wins, since repeated log lines are real):
 * whatever it has past the kept lines' end is appended, and an excerpt that
 * ends within them adds nothing. A non-empty one that shares no line with
 * them follows a gap in what the panel saw, and replaces them.
 */
export function mergeLogTail(
  kept: readonly string[],
  incoming: readonly string[],
  maxLines: number
): string[] {
  const offset = bestAlignment(kept, incoming);
  if (offset === null) {
    // The log only grows: an empty excerpt is from before its first line.
    return lastLines(incoming.length > 0 ? incoming : kept, maxLines);
  }
  const merged =
    offset + incoming.length <= kept.length
      ? kept
      : [...kept.slice(0, Math.max(0, offset)), ...incoming];
  return lastLines(merged, maxLines);
}

/**
 * The position in `kept` at which `incoming` starts (negative: before the
 * first kept line) such that both agree on the most lines, or null when no
 * alignment has a line in common.
 */
function bestAlignment(
  kept: readonly string[],
  incoming: readonly string[]
): number | null {
  let best: number | null = null;
  let bestOverlap = 0;
  for (let offset = 1 - incoming.length; offset < kept.length; offset++) {
    const overlap = agreeingOverlap(kept, incoming, offset);
    if (overlap >= bestOverlap && overlap > 0) {
      best = offset;
      bestOverlap = overlap;
    }
  }
  return best;
}

/** Lines in common at that offset if all of them are equal, else 0. */
function agreeingOverlap(
  kept: readonly string[],
  incoming: readonly string[],
  offset: number
): number {
  const start = Math.max(0, offset);
  const end = Math.min(kept.length, offset + incoming.length);
  for (let index = start; index < end; index++) {
    if (kept[index] !== incoming[index - offset]) {
      return 0;
    }
  }
  return end - start;
}

/**
 * The job to store after an update, keeping only a tail of `tailLength`
 * log lines; null when the update must be ignored because it is older than
 * what is stored (an event can overtake the answer of the request that
 * started the job, and a job that ended does not run again).
 */
export function mergeJobUpdate(
  previous: IJob | undefined,
  update: IJob,
  tailLength: number
): IJob | null {
  if (previous && isFinalState(previous.state) && !isFinalState(update.state)) {
    return null;
  }
  const kept = previous?.log_tail ?? [];
  const incoming = update.log ?? update.log_tail;
  const tail = incoming
    ? mergeLogTail(kept, incoming, tailLength)
    : lastLines(kept, tailLength);
  return { ...update, log: undefined, log_tail: tail };
}

/**
 * Whether storing `current` is the moment the job ended. A job first seen
 * already ended counts only once the first listing is in: the jobs listed
 * on page load changed nothing the panel has shown.
 */
export function endsNow(
  previous: IJob | undefined,
  current: IJob,
  listedBefore: boolean
): boolean {
  if (!isFinalState(current.state)) {
    return false;
  }
  return previous ? !isFinalState(previous.state) : listedBefore;
}

/** Pending and running jobs, oldest first. */
export function activeJobs(jobs: readonly IJob[]): IJob[] {
  return jobs
    .filter(job => !isFinalState(job.state))
    .sort((a, b) => a.created - b.created);
}

/** Active jobs, then the `maxFinished` most recently ended ones. */
export function visibleJobs(
  jobs: readonly IJob[],
  maxFinished: number
): IJob[] {
  const finished = jobs
    .filter(job => isFinalState(job.state))
    .sort((a, b) => (b.finished ?? b.created) - (a.finished ?? a.created))
    .slice(0, Math.max(0, maxFinished));
  return [...activeJobs(jobs), ...finished];
}

/** The job that is changing an overlay right now, if any. */
export function activeJobOn(
  jobs: readonly IJob[],
  target: string
): IJob | undefined {
  return activeJobs(jobs).find(job => job.target === target);
}

/**
 * The job in a bus event of the job schema, or null for other events. The
 * event's data is a job with `log_tail` in place of `log`.
 */
export function jobFromEvent(emission: Event.Emission): IJob | null {
  if (emission.schema_id !== JOB_EVENT_SCHEMA_ID) {
    return null;
  }
  const job: Partial<Event.Emission> = { ...emission };
  delete job.schema_id;
  return job as unknown as IJob;
}

/**
 * The job's message, unless it repeats the start of its error (a failed
 * job's message is the first line of the error, which is shown in full).
 */
export function shownMessage(job: IJob): string {
  return job.error && job.error.startsWith(job.message) ? '' : job.message;
}

/**
 * The log lines shown under a job: its tail while it runs or after it
 * failed; none for one that succeeded or was cancelled.
 */
export function shownLogLines(job: IJob, tailLength: number): string[] {
  const showTail = !isFinalState(job.state) || job.state === 'failed';
  return showTail ? lastLines(job.log_tail ?? [], tailLength) : [];
}
