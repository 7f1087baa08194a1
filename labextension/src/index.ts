import { ILayoutRestorer } from '@jupyterlab/application';
import type {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import type { Contents } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import type { TranslationBundle } from '@jupyterlab/translation';

import { CondaTainerClient } from './client';
import { condatainerIcon } from './icon';
import { ILaunchProgress } from './launch';
import type { LaunchStore } from './launch';
import { launchPlugin } from './launchplugin';
import { stackRecordPlugin } from './stackrecord';
import { LifecycleClient } from './lifecycle';
import { connectNotifications } from './notify';
import { noticesPlugin } from './noticesplugin';
// The panel is added to the shell at activation, so its model and widget
// load with the plugin.
// eslint-disable-next-line jupyter/prefer-lazy-imports
import { CondaTainerModel } from './model';
import type { IPanelActions } from './sections/common';
import { openStackTerminal } from './terminal';
import { CommandIDs, PANEL_ID, PLUGIN_ID, TRANSLATION_DOMAIN } from './tokens';
// eslint-disable-next-line jupyter/prefer-lazy-imports
import { CondaTainerPanel } from './widget';

/**
 * The CondaTainer side panel: browse images and overlays, manage writable
 * envs and their packages, follow the jobs that change them, and open a
 * notebook on an overlay's kernel.
 */
const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'A side panel for CondaTainer images, overlays, writable envs and their kernels.',
  autoStart: true,
  optional: [
    ITranslator,
    ILayoutRestorer,
    ICommandPalette,
    ISettingRegistry,
    IDefaultFileBrowser,
    ILaunchProgress
  ],
  activate: (
    app: JupyterFrontEnd,
    translator: ITranslator | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    fileBrowser: IDefaultFileBrowser | null,
    launches: LaunchStore | null
  ): void => {
    const { commands, serviceManager, shell } = app;
    translator = translator ?? nullTranslator;
    const trans = translator.load(TRANSLATION_DOMAIN);

    const model = new CondaTainerModel({
      client: new CondaTainerClient(serviceManager.serverSettings),
      trans,
      events: serviceManager.events
    });
    // Package changes show the solver's plan first and run once confirmed.
    model.confirmChange = async (env, verb, specs) => {
      const { confirmWithPreview } = await import('./preview');
      return confirmWithPreview(
        serviceManager.serverSettings,
        env,
        verb,
        specs,
        trans
      );
    };
    // A new or deleted env adds or removes a kernel: show it in the launcher
    // now rather than at the kernelspec manager's next poll.
    model.kernelsChanged.connect(() => {
      void serviceManager.kernelspecs.refreshSpecs();
    });
    connectNotifications(model.jobs, trans, {
      error: message => Notification.error(message, { autoClose: false }),
      warning: message => Notification.warning(message, { autoClose: false })
    });

    addCommands(app, model, trans, fileBrowser);

    const actions: IPanelActions = {
      openNotebook: kernelName =>
        commands.execute(CommandIDs.openNotebook, { kernelName }),
      newEnv: () => commands.execute(CommandIDs.newEnv),
      openTerminal: overlay => openStackTerminal(app, { overlay })
    };
    const panel = new CondaTainerPanel({
      model,
      translator,
      actions,
      lifecycle: new LifecycleClient(serviceManager.serverSettings),
      launches: launches ?? undefined,
      serverSettings: serviceManager.serverSettings
    });
    shell.add(panel, 'left', { rank: 850 });
    restorer?.add(panel, PANEL_ID);

    if (palette) {
      const category = trans.__('CondaTainer');
      for (const command of [
        CommandIDs.openPanel,
        CommandIDs.newEnv,
        CommandIDs.refresh
      ]) {
        // `isPalette` lets a label read as a full sentence in the palette.
        palette.addItem({ command, category, args: { isPalette: true } });
      }
    }

    if (settingRegistry) {
      void settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => model.configure(readSettings(settings));
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.error(`jupyter-condatainer: cannot load settings.`, reason);
          model.configure(CondaTainerModel.defaultSettings);
        });
    } else {
      model.configure(CondaTainerModel.defaultSettings);
    }
  }
};

function addCommands(
  app: JupyterFrontEnd,
  model: CondaTainerModel,
  trans: TranslationBundle,
  fileBrowser: IDefaultFileBrowser | null
): void {
  const { commands, shell } = app;

  commands.addCommand(CommandIDs.openPanel, {
    // "View > CondaTainer" in the menu, a full sentence in the palette.
    label: args =>
      args.isPalette
        ? trans.__('Open CondaTainer Panel')
        : trans.__('CondaTainer'),
    caption: trans.__('Show the CondaTainer overlays, envs and jobs'),
    icon: args => (args.isPalette ? undefined : condatainerIcon),
    execute: () => shell.activateById(PANEL_ID),
    describedBy: { args: { type: 'object', properties: {} } }
  });

  commands.addCommand(CommandIDs.refresh, {
    label: trans.__('Refresh CondaTainer Overlays and Jobs'),
    execute: () => model.refresh(),
    describedBy: { args: { type: 'object', properties: {} } }
  });

  commands.addCommand(CommandIDs.newEnv, {
    label: trans.__('New CondaTainer Env…'),
    caption: trans.__('Create a writable conda env in a new overlay'),
    execute: async () => {
      const { createEnvWithDialog } = await import('./sections/createdialog');
      const job = await createEnvWithDialog(model, trans);
      if (job) {
        // Bring the panel forward so the new job's progress is in view.
        shell.activateById(PANEL_ID);
      }
      return job;
    },
    describedBy: { args: { type: 'object', properties: {} } }
  });

  commands.addCommand(CommandIDs.openNotebook, {
    label: args =>
      args.kernelName
        ? trans.__('New Notebook with Kernel %1', args.kernelName as string)
        : trans.__('New Notebook with a CondaTainer Kernel'),
    isEnabled: args => typeof args.kernelName === 'string',
    execute: async args => {
      const kernelName = args.kernelName as string;
      const cwd = (args.cwd as string | undefined) ?? fileBrowser?.model.path;
      // Create first, then open with the kernel: `docmanager:open` is the
      // one command that takes a kernel for a notebook it opens.
      const created: Contents.IModel | undefined = await commands.execute(
        'docmanager:new-untitled',
        { path: cwd ?? '', type: 'notebook' }
      );
      if (!created) {
        // docmanager has already shown why the file could not be created.
        return undefined;
      }
      return commands.execute('docmanager:open', {
        path: created.path,
        factory: 'Notebook',
        kernel: { name: kernelName }
      });
    },
    describedBy: {
      args: {
        type: 'object',
        properties: {
          kernelName: {
            type: 'string',
            description: trans.__('Name of the kernelspec to start')
          },
          cwd: {
            type: 'string',
            description: trans.__(
              'Folder of the new notebook; defaults to the file browser folder'
            )
          }
        },
        required: ['kernelName']
      }
    }
  });
}

/** The settings of `schema/plugin.json`, with defaults for missing values. */
function readSettings(
  settings: ISettingRegistry.ISettings
): CondaTainerModel.ISettings {
  const defaults = CondaTainerModel.defaultSettings;
  const numberOf = (key: keyof CondaTainerModel.ISettings) => {
    const value = settings.get(key).composite;
    return typeof value === 'number' ? value : defaults[key];
  };
  return {
    refreshInterval: numberOf('refreshInterval'),
    maxFinishedJobs: numberOf('maxFinishedJobs'),
    logLines: numberOf('logLines')
  };
}

export default [plugin, launchPlugin, stackRecordPlugin, noticesPlugin];
