import type { TranslationBundle } from '@jupyterlab/translation';
import { closeIcon, ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import type { CondaTainerModel } from '../model';

/**
 * Base of the panel's sections: a ReactWidget that re-renders whenever the
 * shared model changes (the pattern of JupyterLab's extension manager).
 */
export abstract class ModelSection extends ReactWidget {
  constructor(
    protected readonly model: CondaTainerModel,
    protected readonly trans: TranslationBundle
  ) {
    super();
    this.addClass('jp-condatainer-section');
    model.stateChanged.connect(this.update, this);
  }

  dispose(): void {
    this.model.stateChanged.disconnect(this.update, this);
    super.dispose();
  }
}

/**
 * The error of one action, shown where the action was started, with a
 * button to dismiss it. Renders nothing when there is no error.
 */
export function ActionError(props: {
  model: CondaTainerModel;
  actionKey: string;
  trans: TranslationBundle;
}): React.ReactElement | null {
  const { model, actionKey, trans } = props;
  const message = model.error(actionKey);
  if (!message) {
    return null;
  }
  return (
    <div
      className="jp-condatainer-error"
      data-testid="jp-condatainer-error"
      role="alert"
    >
      <span className="jp-condatainer-error-text">{message}</span>
      <button
        className="jp-condatainer-error-dismiss"
        title={trans.__('Dismiss')}
        aria-label={trans.__('Dismiss')}
        onClick={() => model.clearError(actionKey)}
      >
        <closeIcon.react tag="span" />
      </button>
    </div>
  );
}

/** A short status word in a rounded box (e.g. "in use", "running"). */
export function Badge(props: {
  kind: string;
  title?: string;
  children: React.ReactNode;
}): React.ReactElement {
  return (
    <span
      className={`jp-condatainer-badge jp-condatainer-badge-${props.kind}`}
      data-testid={`jp-condatainer-badge-${props.kind}`}
      title={props.title}
    >
      {props.children}
    </span>
  );
}

/**
 * What the panel asks of the application; index.ts implements these with
 * commands so the panel itself stays free of the command registry.
 */
export interface IPanelActions {
  /** Create a notebook in the file browser's folder with this kernel. */
  openNotebook(kernelName: string): Promise<void>;
  /** Ask for the settings of a new writable env and start creating it. */
  newEnv(): Promise<void>;
}
