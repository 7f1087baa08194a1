import { Dialog, showDialog } from '@jupyterlab/apputils';
import type { ServerConnection } from '@jupyterlab/services';
import type { TranslationBundle } from '@jupyterlab/translation';
import { Button, ReactWidget, refreshIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

import { formatBytes, percent } from './format';
import type { CondaTainerModel } from './model';
import { errorMessage, requestAPI } from './request';
import type { IJob } from './tokens';

/** One env's use (`GET disk`), in bytes. */
export interface IEnvDisk {
  name: string;
  path: string;
  size: number;
  allocated: number;
  fs_total: number;
  fs_used: number;
  fs_free: number;
  in_use: boolean;
  nearly_full: boolean;
}

/** An image directory's file system, in bytes. */
export interface IDirDisk {
  path: string;
  total: number;
  free: number;
}

/** Body of `GET disk`. */
export interface IDiskUsage {
  envs: IEnvDisk[];
  image_dirs: IDirDisk[];
}

/** The size a "Grow" proposes: double, rounded up to whole GiB above 1 GiB. */
export function proposedSizeMiB(env: IEnvDisk): number {
  const doubled = Math.ceil((env.fs_total * 2) / (1024 * 1024));
  return doubled > 1024 ? Math.ceil(doubled / 1024) * 1024 : doubled;
}

/**
 * The panel's Disk section: each env's use of its size (and what it takes
 * on disk), the image directories' free space, and "Grow…" for an env.
 */
export class DiskSection extends ReactWidget {
  constructor(
    private readonly _model: CondaTainerModel,
    private readonly _settings: ServerConnection.ISettings,
    private readonly _trans: TranslationBundle
  ) {
    super();
    this.addClass('jp-condatainer-section');
    this.addClass('jp-condatainer-disk');
    this.title.label = _trans.__('Disk');
    // A finished job (install, create, resize) changes what the envs use.
    _model.jobs.finished.connect(this._onJobFinished, this);
    void this.refresh();
  }

  dispose(): void {
    this._model.jobs.finished.disconnect(this._onJobFinished, this);
    super.dispose();
  }

  /** Fetch the use again. */
  async refresh(): Promise<void> {
    try {
      this._usage = await requestAPI<IDiskUsage>('disk', this._settings);
      this._error = '';
    } catch (reason) {
      this._error = errorMessage(reason, this._trans);
    }
    this.update();
  }

  /** Ask for a new size and start the job that grows the env. */
  async grow(env: IEnvDisk): Promise<void> {
    const trans = this._trans;
    const input = document.createElement('input');
    input.type = 'number';
    input.min = String(Math.floor(env.fs_total / (1024 * 1024)) + 1);
    input.value = String(proposedSizeMiB(env));
    input.className = 'jp-mod-styled';
    input.dataset.testid = 'jp-condatainer-grow-size';
    const body = new (class extends ReactWidget {
      render() {
        return (
          <label>
            {trans.__(
              '%1 uses %2 of %3. New size in MiB:',
              env.name,
              formatBytes(env.fs_used),
              formatBytes(env.fs_total)
            )}
          </label>
        );
      }
    })();
    body.node.appendChild(input);
    const result = await showDialog({
      title: trans.__('Grow %1', env.name),
      body,
      buttons: [
        Dialog.cancelButton({ label: trans.__('Cancel') }),
        Dialog.okButton({ label: trans.__('Grow') })
      ]
    });
    if (!result.button.accept) {
      return;
    }
    try {
      const reply = await requestAPI<{ job: IJob }>(
        `overlays/${encodeURIComponent(env.name)}/resize`,
        this._settings,
        { method: 'POST', body: { size_mb: Number(input.value) } }
      );
      this._model.jobs.upsert(reply.job);
      this._error = '';
    } catch (reason) {
      this._error = errorMessage(reason, trans);
    }
    this.update();
  }

  protected render(): React.ReactElement {
    const trans = this._trans;
    const usage = this._usage;
    return (
      <>
        <div className="jp-condatainer-row">
          <span />
          <Button
            minimal
            small
            title={trans.__('Refresh disk use')}
            onClick={() => void this.refresh()}
          >
            <refreshIcon.react tag="span" />
          </Button>
        </div>
        {this._error && (
          <div className="jp-condatainer-error" role="alert">
            <span className="jp-condatainer-error-text">{this._error}</span>
          </div>
        )}
        {usage?.image_dirs.map(dir => (
          <div
            key={dir.path}
            className="jp-condatainer-disk-dir"
            data-testid="jp-condatainer-disk-dir"
            title={dir.path}
          >
            {trans.__(
              '%1: %2 free of %3',
              dir.path,
              formatBytes(dir.free),
              formatBytes(dir.total)
            )}
          </div>
        ))}
        <ul className="jp-condatainer-list">
          {usage?.envs.map(env => (
            <li
              key={env.path}
              className="jp-condatainer-disk-env"
              data-testid="jp-condatainer-disk-env"
              data-env-name={env.name}
            >
              <div className="jp-condatainer-row">
                <span className="jp-condatainer-name">{env.name}</span>
                <Button
                  small
                  data-testid="jp-condatainer-grow-button"
                  disabled={env.in_use}
                  title={
                    env.in_use
                      ? trans.__('In use: stop its kernel to grow it')
                      : trans.__('Grow this env')
                  }
                  onClick={() => void this.grow(env)}
                >
                  {trans.__('Grow…')}
                </Button>
              </div>
              <progress
                className={env.nearly_full ? 'jp-mod-warn' : ''}
                max={100}
                value={percent(env.fs_total ? env.fs_used / env.fs_total : 0)}
              />
              <div className="jp-condatainer-disk-use">
                {trans.__(
                  '%1 of %2 used; %3 on disk',
                  formatBytes(env.fs_used),
                  formatBytes(env.fs_total),
                  formatBytes(env.allocated)
                )}
                {env.nearly_full && ` — ${trans.__('nearly full')}`}
              </div>
            </li>
          ))}
        </ul>
      </>
    );
  }

  private _onJobFinished(): void {
    void this.refresh();
  }

  private _usage: IDiskUsage | null = null;
  private _error = '';
}
