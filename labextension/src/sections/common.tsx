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
      <ErrorText message={message} />
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

/**
 * An error message as the server writes them: the first line says what
 * happened and what to do, and is shown prominently; the lines after it are
 * the tool's own output, shown once, wrapped (never cut off at the edge).
 */
export function ErrorText(props: { message: string }): React.ReactElement {
  const [first, ...detail] = props.message.split('\n');
  return (
    <div className="jp-condatainer-error-text">
      <div
        className="jp-condatainer-error-first"
        data-testid="jp-condatainer-error-first"
      >
        {first}
      </div>
      {detail.length > 0 && (
        <pre
          className="jp-condatainer-error-detail"
          data-testid="jp-condatainer-error-detail"
        >
          {detail.join('\n')}
        </pre>
      )}
    </div>
  );
}

/**
 * One line on what a section holds, with a link to the docs, so a new user
 * knows what base images, overlays and envs are.
 */
export function SectionHelp(props: {
  text: string;
  trans: TranslationBundle;
}): React.ReactElement {
  return (
    <p className="jp-condatainer-section-help">
      {props.text}{' '}
      <a
        href={DOCS_URL}
        target="_blank"
        rel="noopener noreferrer"
        className="jp-condatainer-docs-link"
      >
        {props.trans.__('Docs')}
      </a>
    </p>
  );
}

/** Where the panel's "Docs" links go: the project's README. */
export const DOCS_URL = 'https://github.com/Justype/condatainer#readme';

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
  /**
   * Open a terminal in the stack a kernel on this overlay or env runs,
   * without a kernel (an env read-only).
   */
  openTerminal(overlayName: string): Promise<void>;
}
