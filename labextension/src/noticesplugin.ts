import type {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';
import { KernelAPI } from '@jupyterlab/services';
import type { Event } from '@jupyterlab/services';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';

import {
  countdownMessage,
  kernelEvent,
  missedEnds,
  noticeView,
  seenKey
} from './kernelnotices';
import type { IKernelEvent, IKernelNotice } from './kernelnotices';
import { requestAPI } from './request';
import { TRANSLATION_DOMAIN } from './tokens';

const COUNTDOWN_MS = 1000;
const SEEN_KEY = 'jupyter-condatainer:seen-kernel-ends';

/**
 * Notifications for what the server tells about kernels: a SLURM job queued
 * (with a button that cancels the start and the job), its time limit nearing
 * (a notification that counts down to the end), its end by the time limit, a
 * kernel culled for idleness. Ends that happened while no JupyterLab was open
 * are shown once when it opens.
 */
export const noticesPlugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-condatainer:kernel-notices',
  description:
    'Notifications for SLURM kernels: queue, time left, time limit, culling.',
  autoStart: true,
  optional: [ITranslator],
  activate: (app: JupyterFrontEnd, translator: ITranslator | null): void => {
    const { serviceManager } = app;
    const trans = (translator ?? nullTranslator).load(TRANSLATION_DOMAIN);
    // One notification per kernel, updated as its story goes on.
    const shown = new Map<string, string>();
    const timers = new Map<string, number>();

    const stopCountdown = (kernelId: string) => {
      const timer = timers.get(kernelId);
      if (timer !== undefined) {
        window.clearInterval(timer);
        timers.delete(kernelId);
      }
    };

    const show = (event: IKernelEvent) => {
      const view = noticeView(event);
      stopCountdown(event.kernel_id);
      if (!view) {
        return;
      }
      const actions = view.cancellable
        ? [
            {
              label: trans.__('Cancel'),
              caption: trans.__(
                'Shut the kernel down and cancel its SLURM job'
              ),
              callback: () => {
                void KernelAPI.shutdownKernel(
                  event.kernel_id,
                  serviceManager.serverSettings
                );
              }
            }
          ]
        : [];
      const options = { autoClose: false as const, actions };
      const previous = shown.get(event.kernel_id);
      if (previous) {
        Notification.dismiss(previous);
      }
      const id = Notification.emit(view.message, view.type, options);
      shown.set(event.kernel_id, id);
      if (view.countdown && event.end_time && event.job_id) {
        const { job_id: jobId, end_time: endTime } = event;
        timers.set(
          event.kernel_id,
          window.setInterval(() => {
            Notification.update({
              id,
              message: countdownMessage(jobId, endTime, Date.now()),
              type: 'warning',
              autoClose: false
            });
          }, COUNTDOWN_MS)
        );
      }
    };

    // Ends already shown, across reloads: a user is told once.
    const seen = new Set<string>(
      JSON.parse(window.localStorage.getItem(SEEN_KEY) ?? '[]') as string[]
    );
    const remember = (event: IKernelEvent & { updated?: number }) => {
      if (event.updated !== undefined) {
        seen.add(seenKey(event.kernel_id, event.updated));
        window.localStorage.setItem(SEEN_KEY, JSON.stringify([...seen]));
      }
    };
    void requestAPI<{ kernels: IKernelNotice[] }>(
      'kernels',
      serviceManager.serverSettings
    )
      .then(answer => {
        for (const notice of answer.kernels) {
          const [missed] = missedEnds([notice], seen);
          if (missed) {
            show(missed);
            remember({ ...missed, updated: notice.updated });
          }
        }
      })
      .catch(() => undefined); // a server without the extension: nothing to tell

    serviceManager.events.stream.connect(
      (_: Event.IManager, emission: Event.Emission) => {
        const event = kernelEvent(emission);
        if (event) {
          show(event);
          if (noticeView(event)?.type === 'error') {
            remember(event as IKernelEvent & { updated?: number });
          }
        }
      }
    );
  }
};
