import { Dialog, showDialog } from '@jupyterlab/apputils';
import type { ServerConnection } from '@jupyterlab/services';
import type { TranslationBundle } from '@jupyterlab/translation';
import { Button, closeIcon, ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { errorMessage, requestAPI } from './request';

import { elapsedSeconds, formatSeconds } from './launch';
import type { ILaunch, LaunchStore } from './launch';

/** Re-render once a second while a start runs, so its seconds count up. */
function useTicking(store: LaunchStore): number {
  const [now, setNow] = React.useState(Date.now());
  React.useEffect(() => {
    const onChange = () => setNow(Date.now());
    store.changed.connect(onChange);
    return () => {
      store.changed.disconnect(onChange);
    };
  }, [store]);
  const running = store.running.length > 0;
  React.useEffect(() => {
    if (!running) {
      return;
    }
    const timer = window.setInterval(() => setNow(Date.now()), 1000);
    return () => window.clearInterval(timer);
  }, [running]);
  return now;
}

/** "python/3.11: starting instance … (4 s)" in the words of the server. */
function describe(
  launch: ILaunch,
  now: number,
  trans: TranslationBundle
): string {
  const { event } = launch;
  const seconds = formatSeconds(elapsedSeconds(launch, now));
  return trans.__('%1 (%2)', event.message, seconds);
}

function StatusText(props: {
  store: LaunchStore;
  trans: TranslationBundle;
}): React.ReactElement | null {
  const { store, trans } = props;
  const now = useTicking(store);
  const launch = store.headline;
  if (!launch) {
    return null;
  }
  const failed = launch.event.state === 'failed';
  const text = describe(launch, now, trans);
  return (
    <span
      className={`jp-condatainer-launch-status${failed ? ' jp-mod-failed' : ''}`}
      data-testid="jp-condatainer-launch-status"
      data-step={launch.event.step}
      data-state={launch.event.state}
      title={launch.event.error ?? text}
      onClick={failed ? () => store.dismiss(launch.event.kernel_id) : undefined}
    >
      {trans.__('CondaTainer kernel: %1', text)}
    </span>
  );
}

/**
 * The status bar item: what the newest CondaTainer kernel start is doing and
 * for how long; a failure stays (with the step it failed in) until clicked.
 */
export class LaunchStatus extends ReactWidget {
  constructor(
    private readonly _store: LaunchStore,
    private readonly _trans: TranslationBundle
  ) {
    super();
    this.addClass('jp-condatainer-launch-statusbar');
  }

  protected render(): React.ReactElement {
    return <StatusText store={this._store} trans={this._trans} />;
  }
}

/** One log of a kernel (`GET kernels/ID/logs`). */
interface IKernelLog {
  name: string;
  path: string;
  text: string;
}

/** Show a kernel's container output (its own, and its instance's) in a dialog. */
export async function showKernelLogs(
  settings: ServerConnection.ISettings,
  kernelId: string,
  trans: TranslationBundle
): Promise<void> {
  let body: React.ReactElement;
  try {
    const reply = await requestAPI<{ logs: IKernelLog[] }>(
      `kernels/${encodeURIComponent(kernelId)}/logs`,
      settings
    );
    body = (
      <div className="jp-condatainer-kernel-logs">
        {reply.logs.map(log => (
          <section key={log.path} data-testid="jp-condatainer-kernel-log">
            <h3 title={log.path}>{log.name}</h3>
            <pre className="jp-condatainer-log">
              {log.text || trans.__('(empty)')}
            </pre>
          </section>
        ))}
      </div>
    );
  } catch (reason) {
    body = <p>{errorMessage(reason, trans)}</p>;
  }
  await showDialog({
    title: trans.__('Container output of kernel %1', kernelId),
    body,
    buttons: [Dialog.okButton({ label: trans.__('Close') })]
  });
}

function LaunchList(props: {
  store: LaunchStore;
  trans: TranslationBundle;
  settings?: ServerConnection.ISettings;
}): React.ReactElement {
  const { store, trans, settings } = props;
  const now = useTicking(store);
  const launches = store.all.reverse();
  if (launches.length === 0) {
    return (
      <p className="jp-condatainer-placeholder">
        {trans.__('No kernel is starting.')}
      </p>
    );
  }
  return (
    <ul className="jp-condatainer-list">
      {launches.map(launch => {
        const { event } = launch;
        return (
          <li
            key={event.kernel_id}
            className="jp-condatainer-launch"
            data-testid="jp-condatainer-launch"
            data-state={event.state}
            data-step={event.step}
          >
            <div className="jp-condatainer-row">
              <span className="jp-condatainer-name" title={event.kernel_id}>
                {event.kernel_name || event.kernel_id}
              </span>
              <span className="jp-condatainer-launch-elapsed">
                {formatSeconds(elapsedSeconds(launch, now))}
              </span>
              {store.openTerminal && event.state === 'ready' && (
                <Button
                  small
                  minimal
                  data-testid="jp-condatainer-kernel-terminal-button"
                  title={trans.__(
                    "Open a terminal in this kernel's container, with its environment"
                  )}
                  onClick={() => void store.openTerminal?.(event.kernel_id)}
                >
                  {trans.__('Terminal')}
                </Button>
              )}
              {settings && (
                <Button
                  small
                  minimal
                  data-testid="jp-condatainer-kernel-logs-button"
                  title={trans.__('Show the kernel container output')}
                  onClick={() =>
                    void showKernelLogs(settings, event.kernel_id, trans)
                  }
                >
                  {trans.__('Logs')}
                </Button>
              )}
              {event.state !== 'running' && (
                <button
                  className="jp-condatainer-error-dismiss"
                  title={trans.__('Dismiss')}
                  aria-label={trans.__('Dismiss')}
                  onClick={() => store.dismiss(event.kernel_id)}
                >
                  <closeIcon.react tag="span" />
                </button>
              )}
            </div>
            <div
              className={
                event.state === 'failed'
                  ? 'jp-condatainer-error-text'
                  : 'jp-condatainer-launch-message'
              }
            >
              {event.message}
            </div>
            {event.error && event.error !== event.message && (
              <pre className="jp-condatainer-log">{event.error}</pre>
            )}
          </li>
        );
      })}
    </ul>
  );
}

/** The panel's "Kernel starts" section: every start this page heard of. */
export class LaunchSection extends ReactWidget {
  constructor(
    private readonly _store: LaunchStore,
    private readonly _trans: TranslationBundle,
    private readonly _settings?: ServerConnection.ISettings
  ) {
    super();
    this.addClass('jp-condatainer-section');
    this.addClass('jp-condatainer-launches');
    this.title.label = _trans.__('Kernel starts');
  }

  protected render(): React.ReactElement {
    return (
      <LaunchList
        store={this._store}
        trans={this._trans}
        settings={this._settings}
      />
    );
  }
}
