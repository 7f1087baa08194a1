import type {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ILabShell } from '@jupyterlab/application';
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import type { ISignal } from '@lumino/signaling';
import type { Widget } from '@lumino/widgets';
import * as React from 'react';

import { CondaTainerClient } from './client';
import { LifecycleClient } from './lifecycle';
import type { IRemedy, IRemedyTarget } from './remedies';
import { applyRemedy, recordedStack, STACK_METADATA_KEY } from './remedies';
import { errorMessage, requestAPI } from './request';
import { TRANSLATION_DOMAIN } from './tokens';

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
    session?: {
      kernel?: { id: string; restart(): Promise<void> } | null;
    } | null;
    statusChanged: ISignal<unknown, string>;
    changeKernel(options: { name: string }): Promise<unknown>;
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
 * identities, env revision) goes into the notebook's metadata (the kernel
 * also carries it in its `language_info`, which every client saves); when a
 * notebook with a record is opened, the server compares it with the images
 * now, the user is told what differs and offered the remedies the server
 * finds: another kernel with the recorded images, a freeze of the recorded
 * env revision, a rollback of the env (confirmed: it changes it for everyone).
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
    const client = new CondaTainerClient(settings);
    const lifecycle = new LifecycleClient(settings);
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
      const model = notebook.context.model;
      const stack = recordedStack(key => model.getMetadata(key));
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
      const kernelspec = model.getMetadata('kernelspec') as
        { name?: string } | undefined;
      let remedies: IRemedy[] = [];
      try {
        ({ remedies } = await requestAPI<{ remedies: IRemedy[] }>(
          'stack/remedies',
          settings,
          { method: 'POST', body: { stack, kernel: kernelspec?.name ?? '' } }
        ));
      } catch {
        // a server without remedies: the differences alone
      }
      const buttons = remedies.map(remedy =>
        Dialog.okButton({
          label: remedy.label,
          caption: remedy.description,
          className: 'jp-condatainer-remedy'
        })
      );
      const result = await showDialog({
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
            {remedies.length > 0 && (
              <>
                <p>{trans.__('To get the recorded stack back:')}</p>
                <ul data-testid="jp-condatainer-stack-remedies">
                  {remedies.map(remedy => (
                    <li key={remedy.label}>
                      <strong>{remedy.label}</strong>: {remedy.description}
                    </li>
                  ))}
                </ul>
              </>
            )}
          </div>
        ),
        buttons: [
          ...buttons,
          remedies.length > 0
            ? Dialog.cancelButton({ label: trans.__('Keep as it is') })
            : Dialog.okButton({ label: trans.__('OK') })
        ]
      });
      const chosen = result.button.accept
        ? remedies.find(remedy => remedy.label === result.button.label)
        : undefined;
      if (chosen) {
        await apply(notebook, chosen);
      }
    }

    /**
     * Apply a remedy, once confirmed when it changes the env for everyone;
     * its progress and outcome as a notification.
     */
    async function apply(
      notebook: INotebookLike,
      remedy: IRemedy
    ): Promise<void> {
      if (remedy.shared && !(await confirmShared(remedy))) {
        return;
      }
      const applied = applyRemedy(remedy, remedyTarget(notebook));
      Notification.promise(
        applied.then(() => null),
        {
          pending: {
            message: trans.__('%1…', remedy.label),
            options: { autoClose: false }
          },
          success: {
            message: () => trans.__('Done: %1', remedy.label),
            options: { autoClose: 5000 }
          },
          error: {
            message: error =>
              trans.__(
                '%1 did not work: %2',
                remedy.label,
                errorMessage(error, trans)
              )
          }
        }
      );
    }

    async function confirmShared(remedy: IRemedy): Promise<boolean> {
      const answer = await showDialog({
        title: trans.__('Roll back %1 for everyone?', remedy.env),
        body: remedy.description,
        buttons: [
          Dialog.cancelButton(),
          Dialog.warnButton({ label: trans.__('Roll back') })
        ],
        defaultButton: 0 // Enter keeps the env as it is
      });
      return answer.button.accept;
    }

    function remedyTarget(notebook: INotebookLike): IRemedyTarget {
      const session = notebook.sessionContext;
      return {
        freeze: (env, request) => lifecycle.freeze(env, request),
        rollback: (env, revision) => lifecycle.rollback(env, revision),
        job: id => client.getJob(id),
        refreshKernelspecs: () => app.serviceManager.kernelspecs.refreshSpecs(),
        changeKernel: async name => {
          await session.changeKernel({ name });
        },
        restartKernel: async () => {
          await session.session?.kernel?.restart();
        },
        sleep: ms => new Promise(resolve => setTimeout(resolve, ms))
      };
    }
  }
};
