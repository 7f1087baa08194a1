import type {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ILabShell } from '@jupyterlab/application';
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import type { ISignal } from '@lumino/signaling';
import type { Widget } from '@lumino/widgets';
import * as React from 'react';

import { requestAPI } from './request';
import { TRANSLATION_DOMAIN } from './tokens';

/** The notebook metadata key of the recorded stack. */
export const STACK_METADATA_KEY = 'condatainer';

/** What this plugin needs of a notebook panel (no dependency on @jupyterlab/notebook). */
interface INotebookLike {
  context: {
    ready: Promise<void>;
    model: {
      getMetadata(key: string): unknown;
      setMetadata(key: string, value: unknown): void;
    };
  };
  sessionContext: {
    session?: { kernel?: { id: string } | null } | null;
    statusChanged: ISignal<unknown, string>;
  };
}

function asNotebook(widget: Widget | null): INotebookLike | null {
  const candidate = widget as unknown as Partial<INotebookLike> | null;
  const model = candidate?.context?.model;
  return model &&
    typeof model.getMetadata === 'function' &&
    typeof model.setMetadata === 'function' &&
    candidate?.sessionContext?.statusChanged
    ? (candidate as INotebookLike)
    : null;
}

/**
 * The notebook records its stack: when a CondaTainer kernel has started
 * in a notebook, the kernel's stack record (base image, overlays with their
 * identities, env revision) goes into the notebook's metadata; when a
 * notebook with a record is opened, the server compares it with the images
 * now and the user is told what differs.
 */
export const stackRecordPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-condatainer:stack-record',
  description:
    'Records the CondaTainer stack a notebook ran on in its metadata.',
  autoStart: true,
  optional: [ILabShell, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell | null,
    translator: ITranslator | null
  ): void => {
    if (!labShell) {
      return;
    }
    const trans = (translator ?? nullTranslator).load(TRANSLATION_DOMAIN);
    const settings = app.serviceManager.serverSettings;
    const seen = new WeakSet<object>();
    labShell.currentChanged.connect((_, args) => {
      const notebook = asNotebook(args.newValue);
      if (!notebook || seen.has(notebook)) {
        return;
      }
      seen.add(notebook);
      void warnIfMoved(notebook);
      let recordedFor = '';
      notebook.sessionContext.statusChanged.connect((__, status) => {
        const kernelId = notebook.sessionContext.session?.kernel?.id;
        if (status === 'idle' && kernelId && kernelId !== recordedFor) {
          recordedFor = kernelId;
          void record(notebook, kernelId);
        }
      });
    });

    async function record(
      notebook: INotebookLike,
      kernelId: string
    ): Promise<void> {
      let stack: unknown;
      try {
        stack = await requestAPI(
          `kernels/${encodeURIComponent(kernelId)}/stack`,
          settings
        );
      } catch {
        return; // not a CondaTainer kernel: nothing to record
      }
      const model = notebook.context.model;
      if (
        JSON.stringify(model.getMetadata(STACK_METADATA_KEY)) !==
        JSON.stringify(stack)
      ) {
        model.setMetadata(STACK_METADATA_KEY, stack);
      }
    }

    async function warnIfMoved(notebook: INotebookLike): Promise<void> {
      await notebook.context.ready;
      const stack = notebook.context.model.getMetadata(STACK_METADATA_KEY);
      if (!stack) {
        return;
      }
      let differences: string[];
      try {
        ({ differences } = await requestAPI<{ differences: string[] }>(
          'stack/compare',
          settings,
          { method: 'POST', body: { stack } }
        ));
      } catch {
        return; // no CondaTainer server extension: nothing to compare with
      }
      if (differences.length === 0) {
        return;
      }
      await showDialog({
        title: trans.__('This notebook ran on another stack'),
        body: (
          <div data-testid="jp-condatainer-stack-differences">
            <p>
              {trans.__(
                'Its metadata records the CondaTainer stack it ran on; today:'
              )}
            </p>
            <ul>
              {differences.map(text => (
                <li key={text}>{text}</li>
              ))}
            </ul>
          </div>
        ),
        buttons: [Dialog.okButton({ label: trans.__('OK') })]
      });
    }
  }
};
