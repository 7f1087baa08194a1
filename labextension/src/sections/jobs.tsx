import { Dialog, showDialog } from '@jupyterlab/apputils';
import type { TranslationBundle } from '@jupyterlab/translation';
import { Button } from '@jupyterlab/ui-components';
import * as React from 'react';

import { formatTime, percent } from '../format';
import { shownLogLines, shownMessage } from '../jobs';
import { ActionKeys } from '../model';
import type { CondaTainerModel } from '../model';
import { errorMessage } from '../request';
import { isFinalState } from '../tokens';
import type { IJob, JobState } from '../tokens';
import { ActionError, Badge, ErrorText, ModelSection } from './common';

/**
 * Running and recent jobs: progress, the last log lines, the outcome, and a
 * Cancel button while a job can still be stopped.
 */
export class JobsSection extends ModelSection {
  constructor(model: CondaTainerModel, trans: TranslationBundle) {
    super(model, trans);
    this.addClass('jp-condatainer-jobs');
    this.title.label = trans.__('Jobs');
  }

  protected render(): React.ReactElement {
    const { model, trans } = this;
    const jobs = model.jobs.visible;
    return (
      <>
        <ActionError
          model={model}
          actionKey={ActionKeys.listJobs}
          trans={trans}
        />
        {jobs.length === 0 ? (
          <p className="jp-condatainer-placeholder">{trans.__('No jobs.')}</p>
        ) : (
          <ul className="jp-condatainer-list">
            {jobs.map(job => (
              <JobRow key={job.id} job={job} model={model} trans={trans} />
            ))}
          </ul>
        )}
      </>
    );
  }
}

function JobRow(props: {
  job: IJob;
  model: CondaTainerModel;
  trans: TranslationBundle;
}): React.ReactElement {
  const { job, model, trans } = props;
  const cancelKey = ActionKeys.cancel(job.id);
  const active = !isFinalState(job.state);
  const progress = percent(job.progress);
  const tail = shownLogLines(job, model.jobs.tailLength);
  const message = shownMessage(job);

  return (
    <li
      className={`jp-condatainer-job jp-mod-${job.state}`}
      data-testid="jp-condatainer-job"
      data-job-id={job.id}
      data-state={job.state}
      data-target={job.target}
    >
      <div className="jp-condatainer-row">
        <span className="jp-condatainer-job-title">
          {trans.__('%1 %2', kindLabel(job.kind, trans), job.target)}
        </span>
        <Badge kind={job.state}>{stateLabel(job.state, trans)}</Badge>
      </div>
      {active && (
        <div
          className="jp-condatainer-progress"
          data-testid="jp-condatainer-job-progress"
          role="progressbar"
          aria-valuemin={0}
          aria-valuemax={100}
          aria-valuenow={progress}
          aria-label={trans.__('Progress of %1', job.target)}
        >
          <div
            className="jp-condatainer-progress-bar"
            style={{ width: `${progress}%` }}
          />
        </div>
      )}
      <div className="jp-condatainer-row jp-condatainer-job-message">
        {/* A failed job's message is its error's first line, shown below. */}
        <span title={message}>{job.error ? '' : message}</span>
        <span
          className="jp-condatainer-job-time"
          title={trans.__('Started %1', formatTime(job.created))}
        >
          {formatTime(job.finished ?? job.created)}
        </span>
      </div>
      {job.error && (
        <div
          className="jp-condatainer-error jp-condatainer-job-error"
          data-testid="jp-condatainer-job-error"
          role="alert"
        >
          <ErrorText message={job.error} />
        </div>
      )}
      {/* The error already holds the tool's last lines: show them once. */}
      {tail.length > 0 && !job.error && (
        <pre
          className="jp-condatainer-log"
          data-testid="jp-condatainer-job-log"
        >
          {tail.join('\n')}
        </pre>
      )}
      <div className="jp-condatainer-row jp-condatainer-actions">
        {active && (
          <Button
            data-testid="jp-condatainer-job-cancel"
            onClick={() => void model.cancelJob(job.id)}
            disabled={model.isBusy(cancelKey) || job.cancellable === false}
            title={
              job.cancellable === false
                ? trans.__('Too far along to stop safely; wait for it to end')
                : trans.__('Stop this job')
            }
            small
          >
            {trans.__('Cancel')}
          </Button>
        )}
        <Button
          data-testid="jp-condatainer-job-full-log"
          onClick={() => void showFullLog(job, model, trans)}
          minimal
          small
        >
          {trans.__('Full log')}
        </Button>
      </div>
      <ActionError model={model} actionKey={cancelKey} trans={trans} />
    </li>
  );
}

/** The whole log in a dialog; fetched on demand because it can be long. */
async function showFullLog(
  job: IJob,
  model: CondaTainerModel,
  trans: TranslationBundle
): Promise<void> {
  let text: string;
  try {
    const lines = await model.fullLog(job.id);
    text = lines.length > 0 ? lines.join('\n') : trans.__('The log is empty.');
  } catch (error) {
    text = errorMessage(error, trans);
  }
  await showDialog({
    title: trans.__('Log of %1 %2', kindLabel(job.kind, trans), job.target),
    body: (
      <pre className="jp-condatainer-log jp-condatainer-full-log">{text}</pre>
    ),
    buttons: [Dialog.okButton({ label: trans.__('Close') })]
  });
}

function stateLabel(state: JobState, trans: TranslationBundle): string {
  switch (state) {
    case 'pending':
      return trans.__('pending');
    case 'running':
      return trans.__('running');
    case 'succeeded':
      return trans.__('succeeded');
    case 'failed':
      return trans.__('failed');
    case 'cancelled':
      return trans.__('cancelled');
    default:
      // A state added by a newer server: show it as sent.
      return state;
  }
}

function kindLabel(kind: string, trans: TranslationBundle): string {
  switch (kind) {
    case 'create':
      return trans.__('Create');
    case 'install':
      return trans.__('Install into');
    case 'remove':
      return trans.__('Remove from');
    default:
      return kind;
  }
}
