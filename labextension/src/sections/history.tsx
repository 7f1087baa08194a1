import { Dialog, showDialog } from '@jupyterlab/apputils';
import type { TranslationBundle } from '@jupyterlab/translation';
import { Button, ReactWidget } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import {
  downloadText,
  type ExportFormat,
  type IRevision,
  type LifecycleClient
} from '../lifecycle';
import type { CondaTainerModel } from '../model';
import type { JobStore } from '../jobstore';
import { errorMessage } from '../request';
import type { IJob } from '../tokens';
import { ModelSection } from './common';

/**
 * The selected env's revisions (newest first), each with its package diff,
 * a Rollback button and Export links (environment.yml, @EXPLICIT lock), and
 * a Freeze action that turns the env into a read-only overlay.
 */
export class HistorySection extends ModelSection {
  constructor(
    model: CondaTainerModel,
    trans: TranslationBundle,
    private readonly _client: LifecycleClient
  ) {
    super(model, trans);
    this.addClass('jp-condatainer-history');
    this.title.label = trans.__('History');
    model.jobs.finished.connect(this._onJobFinished, this);
  }

  dispose(): void {
    this.model.jobs.finished.disconnect(this._onJobFinished, this);
    super.dispose();
  }

  protected onUpdateRequest(msg: Message): void {
    const name = this.model.selected;
    this.title.label = name
      ? this.trans.__('History of %1', name)
      : this.trans.__('History');
    if (name !== this._loadedFor) {
      this._loadedFor = name;
      this._revisions = null;
      this._error = null;
      if (name) {
        void this._load(name);
      }
    }
    super.onUpdateRequest(msg);
  }

  protected render(): React.ReactElement {
    const { model, trans } = this;
    const name = model.selected;
    if (!name) {
      return (
        <p className="jp-condatainer-placeholder">
          {trans.__('Choose "Packages" on a writable env to see its history.')}
        </p>
      );
    }
    const busyJob = model.jobs.activeOn(name);
    const revisions = this._revisions;
    const latest = revisions && revisions.length ? revisions.length - 1 : -1;
    return (
      <div
        className="jp-condatainer-env-history"
        data-testid="jp-condatainer-history"
        data-overlay-name={name}
      >
        <div className="jp-condatainer-row">
          <Button
            data-testid="jp-condatainer-freeze"
            onClick={() => void this._freeze(name, null)}
            disabled={!!busyJob || latest < 0}
            title={trans.__(
              'Freeze the env into a read-only overlay that many kernels can share'
            )}
            small
          >
            {trans.__('Freeze…')}
          </Button>
          <Button
            onClick={() => void this._load(name)}
            title={trans.__('Reload the history')}
            minimal
            small
          >
            {trans.__('Reload')}
          </Button>
        </div>
        {this._error && (
          <div
            className="jp-condatainer-error"
            data-testid="jp-condatainer-error"
            role="alert"
          >
            <span className="jp-condatainer-error-text">{this._error}</span>
          </div>
        )}
        {busyJob && (
          <p className="jp-condatainer-hint">
            {trans.__('A job (%1) is running on this env.', busyJob.kind)}
          </p>
        )}
        {revisions === null ? (
          <p className="jp-condatainer-placeholder">{trans.__('Loading…')}</p>
        ) : revisions.length === 0 ? (
          <p className="jp-condatainer-placeholder">
            {trans.__('No history: the env has no conda-meta/history.')}
          </p>
        ) : (
          <ul className="jp-condatainer-list">
            {[...revisions].reverse().map(revision => (
              <RevisionRow
                key={revision.number}
                revision={revision}
                latest={revision.number === latest}
                busy={!!busyJob}
                trans={trans}
                onRollback={() => void this._rollback(name, revision)}
                onExport={format =>
                  void this._export(name, revision.number, format)
                }
              />
            ))}
          </ul>
        )}
      </div>
    );
  }

  private async _load(name: string): Promise<void> {
    try {
      const revisions = await this._client.history(name);
      if (this.model.selected === name) {
        this._revisions = revisions;
        this._error = null;
      }
    } catch (error) {
      if (this.model.selected === name) {
        this._revisions = this._revisions ?? [];
        this._error = errorMessage(error, this.trans);
      }
    }
    this.update();
  }

  private async _rollback(name: string, revision: IRevision): Promise<void> {
    const trans = this.trans;
    const result = await showDialog({
      title: trans.__('Roll back %1?', name),
      body: trans.__(
        'The env will hold exactly the packages of revision %1 (%2). This is recorded as a new revision.',
        String(revision.number),
        revision.time
      ),
      buttons: [
        Dialog.cancelButton({ label: trans.__('Cancel') }),
        Dialog.warnButton({ label: trans.__('Roll back') })
      ]
    });
    if (!result.button.accept) {
      return;
    }
    await this._submit(() => this._client.rollback(name, revision.number));
  }

  private async _freeze(name: string, revision: number | null): Promise<void> {
    const trans = this.trans;
    let values: IFreezeValues = {
      name: name.split('/')[0] + '-frozen',
      version: '1.0'
    };
    let error: string | null = null;
    for (;;) {
      const result = await showDialog<IFreezeValues>({
        title: trans.__('Freeze %1', name),
        body: new FreezeForm(values, error, trans),
        buttons: [
          Dialog.cancelButton({ label: trans.__('Cancel') }),
          Dialog.okButton({ label: trans.__('Freeze') })
        ],
        focusNodeSelector: 'input[name="frozen-name"]'
      });
      if (!result.button.accept || result.value === null) {
        return;
      }
      values = result.value;
      try {
        const job = await this._client.freeze(name, {
          name: values.name.trim(),
          version: values.version.trim(),
          ...(revision === null ? {} : { revision })
        });
        this.model.jobs.upsert(job);
        return;
      } catch (reason) {
        error = errorMessage(reason, trans);
      }
    }
  }

  private async _export(
    name: string,
    revision: number,
    format: ExportFormat
  ): Promise<void> {
    try {
      const { filename, text } = await this._client.exportText(
        name,
        format,
        revision
      );
      downloadText(filename, text);
    } catch (error) {
      this._error = errorMessage(error, this.trans);
      this.update();
    }
  }

  private async _submit(start: () => Promise<IJob>): Promise<void> {
    try {
      this.model.jobs.upsert(await start());
      this._error = null;
    } catch (error) {
      this._error = errorMessage(error, this.trans);
    }
    this.update();
  }

  private _onJobFinished(_: JobStore, job: IJob): void {
    const name = this.model.selected;
    if (name && job.target === name) {
      void this._load(name);
    }
  }

  private _loadedFor: string | null = null;
  private _revisions: IRevision[] | null = null;
  private _error: string | null = null;
}

function RevisionRow(props: {
  revision: IRevision;
  latest: boolean;
  busy: boolean;
  trans: TranslationBundle;
  onRollback: () => void;
  onExport: (format: ExportFormat) => void;
}): React.ReactElement {
  const { revision, latest, busy, trans } = props;
  const changes = [
    ...revision.added.map(p => `+ ${p.name} ${p.version}`),
    ...revision.changed.map(
      c => `~ ${c.name} ${c.from.version} → ${c.to.version}`
    ),
    ...revision.removed.map(p => `- ${p.name} ${p.version}`)
  ];
  return (
    <li
      className="jp-condatainer-revision-row"
      data-testid="jp-condatainer-revision-row"
      data-revision={revision.number}
    >
      <div className="jp-condatainer-row">
        <span className="jp-condatainer-revision-number">
          {trans.__('rev %1', String(revision.number))}
        </span>
        <span
          className="jp-condatainer-revision-command"
          title={`${revision.time}${revision.user ? ' · ' + revision.user : ''}\n${revision.cmd}`}
        >
          {revision.command}
        </span>
      </div>
      <div className="jp-condatainer-hint">
        {revision.time}
        {revision.user ? ` · ${revision.user}` : ''}
      </div>
      {changes.length > 0 && (
        <ul className="jp-condatainer-revision-changes">
          {changes.map(line => (
            <li key={line}>{line}</li>
          ))}
        </ul>
      )}
      <div className="jp-condatainer-row">
        <Button
          data-testid="jp-condatainer-rollback"
          onClick={props.onRollback}
          disabled={latest || busy}
          title={
            latest
              ? trans.__('This is the current revision')
              : trans.__('Make the env hold exactly these packages again')
          }
          minimal
          small
        >
          {trans.__('Rollback')}
        </Button>
        <Button
          data-testid="jp-condatainer-export-yml"
          onClick={() => props.onExport('yml')}
          title={trans.__(
            'environment.yml: the specs asked for, and the channels'
          )}
          minimal
          small
        >
          {trans.__('yml')}
        </Button>
        <Button
          data-testid="jp-condatainer-export-lock"
          onClick={() => props.onExport('lock')}
          title={trans.__('@EXPLICIT lock: every package URL with its hash')}
          minimal
          small
        >
          {trans.__('lock')}
        </Button>
      </div>
    </li>
  );
}

interface IFreezeValues {
  name: string;
  version: string;
}

class FreezeForm
  extends ReactWidget
  implements Dialog.IBodyWidget<IFreezeValues>
{
  constructor(
    private readonly _initial: IFreezeValues,
    private readonly _error: string | null,
    private readonly _trans: TranslationBundle
  ) {
    super();
    this.addClass('jp-condatainer-create-form');
  }

  getValue(): IFreezeValues {
    const field = (name: string) =>
      this.node.querySelector<HTMLInputElement>(`input[name="${name}"]`);
    return {
      name: field('frozen-name')?.value ?? '',
      version: field('frozen-version')?.value ?? ''
    };
  }

  protected render(): React.ReactElement {
    const trans = this._trans;
    return (
      <>
        {this._error && (
          <div className="jp-condatainer-error" role="alert">
            <span className="jp-condatainer-error-text">{this._error}</span>
          </div>
        )}
        <p className="jp-condatainer-hint">
          {trans.__(
            'Builds NAME--VERSION.sqf in the image directory: a read-only overlay mounted at /cnt/NAME/VERSION, with a kernel.'
          )}
        </p>
        <label>
          {trans.__('Name')}
          <input
            className="jp-mod-styled"
            name="frozen-name"
            defaultValue={this._initial.name}
          />
        </label>
        <label>
          {trans.__('Version')}
          <input
            className="jp-mod-styled"
            name="frozen-version"
            defaultValue={this._initial.version}
          />
        </label>
      </>
    );
  }
}
