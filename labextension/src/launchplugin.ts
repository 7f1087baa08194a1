import type {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { IStatusBar } from '@jupyterlab/statusbar';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';

import { ICommandPalette } from '@jupyterlab/apputils';

import { ILaunchProgress, launchFromEvent, LaunchStore } from './launch';
// The status bar item is registered at activation, so its view loads with the plugin.
// eslint-disable-next-line jupyter/prefer-lazy-imports
import { LaunchStatus } from './launchview';
import {
  kernelIdOf,
  OPEN_KERNEL_TERMINAL,
  openStackTerminal
} from './terminal';
import { TRANSLATION_DOMAIN } from './tokens';

/**
 * Launch progress of CondaTainer kernels: listens to the server's event bus
 * for the provisioners' steps and shows the newest start in the status bar
 * (next to the kernel status); the panel lists them all.
 */
export const launchPlugin: JupyterFrontEndPlugin<LaunchStore> = {
  id: 'jupyter-condatainer:launch-progress',
  description: 'Shows what a starting CondaTainer kernel is doing.',
  autoStart: true,
  provides: ILaunchProgress,
  optional: [IStatusBar, ITranslator, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    statusBar: IStatusBar | null,
    translator: ITranslator | null,
    palette: ICommandPalette | null
  ): LaunchStore => {
    const trans = (translator ?? nullTranslator).load(TRANSLATION_DOMAIN);
    const store = new LaunchStore();
    store.openTerminal = kernelId => openStackTerminal(app, { kernelId });
    app.commands.addCommand(OPEN_KERNEL_TERMINAL, {
      label: trans.__('Open Terminal in the Kernel Container'),
      caption: trans.__(
        "A shell in the current CondaTainer kernel's container, with its environment"
      ),
      isEnabled: () => kernelIdOf(app.shell.currentWidget) !== null,
      execute: async args => {
        const kernelId =
          (args.kernelId as string | undefined) ??
          kernelIdOf(app.shell.currentWidget);
        if (kernelId) {
          await openStackTerminal(app, { kernelId });
        }
      },
      describedBy: {
        args: {
          type: 'object',
          properties: {
            kernelId: {
              type: 'string',
              description: trans.__('The kernel; default: the current one')
            }
          }
        }
      }
    });
    palette?.addItem({
      command: OPEN_KERNEL_TERMINAL,
      category: trans.__('CondaTainer')
    });
    app.serviceManager.events.stream.connect((_, emission) => {
      const event = launchFromEvent(emission);
      if (event) {
        store.add(event);
      }
    });
    statusBar?.registerStatusItem('jupyter-condatainer:launch-status', {
      item: new LaunchStatus(store, trans),
      align: 'left',
      rank: 5,
      isActive: () => store.headline !== null,
      activeStateChanged: store.changed
    });
    return store;
  }
};
