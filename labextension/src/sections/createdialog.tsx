import { Dialog, showDialog } from '@jupyterlab/apputils';
import type { TranslationBundle } from '@jupyterlab/translation';
import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { DEFAULT_ENV_FORM, envRequestFromForm } from '../envform';
import type { IEnvFormValues } from '../envform';
import type { CondaTainerModel } from '../model';
import { errorMessage } from '../request';
import type { IJob } from '../tokens';

/**
 * Ask for a new writable env and start the job that creates it.
 *
 * A mistake (client-side check or the server's answer) re-opens the dialog
 * with the typed values and the message above the fields, so the error is
 * shown where it was made. Resolves with the job, or null when cancelled.
 */
export async function createEnvWithDialog(
  model: CondaTainerModel,
  trans: TranslationBundle
): Promise<IJob | null> {
  let values = DEFAULT_ENV_FORM;
  let error: string | null = null;
  for (;;) {
    const result = await showDialog<IEnvFormValues>({
      title: trans.__('New writable env'),
      body: new CreateEnvForm(values, error, trans),
      buttons: [
        Dialog.cancelButton({ label: trans.__('Cancel') }),
        Dialog.okButton({ label: trans.__('Create') })
      ],
      focusNodeSelector: 'input[name="name"]'
    });
    if (!result.button.accept || result.value === null) {
      return null;
    }
    values = result.value;
    const request = envRequestFromForm(values, trans);
    if (typeof request === 'string') {
      error = request;
      continue;
    }
    try {
      return await model.createEnv(request);
    } catch (reason) {
      error = errorMessage(reason, trans);
    }
  }
}

/** The dialog body. Inputs are uncontrolled; `getValue` reads them. */
class CreateEnvForm
  extends ReactWidget
  implements Dialog.IBodyWidget<IEnvFormValues>
{
  constructor(
    private readonly _initial: IEnvFormValues,
    private readonly _error: string | null,
    private readonly _trans: TranslationBundle
  ) {
    super();
    this.addClass('jp-condatainer-create-form');
  }

  getValue(): IEnvFormValues {
    const field = (name: string) =>
      this.node.querySelector<HTMLInputElement>(`input[name="${name}"]`);
    return {
      name: field('name')?.value ?? '',
      sizeMb: field('size')?.value ?? '',
      packages: field('packages')?.value ?? '',
      channels: field('channels')?.value ?? '',
      registerKernel: field('register')?.checked ?? true
    };
  }

  protected render(): React.ReactElement {
    const trans = this._trans;
    const initial = this._initial;
    return (
      <>
        {this._error && (
          <div
            className="jp-condatainer-error"
            data-testid="jp-condatainer-create-error"
            role="alert"
          >
            {this._error}
          </div>
        )}
        <label className="jp-condatainer-field">
          <span>{trans.__('Name')}</span>
          <input
            className="jp-mod-styled"
            name="name"
            data-testid="jp-condatainer-create-name"
            defaultValue={initial.name}
            placeholder={trans.__('e.g. myproject')}
          />
        </label>
        <label className="jp-condatainer-field">
          <span>{trans.__('Size (MB)')}</span>
          <input
            className="jp-mod-styled"
            name="size"
            type="number"
            min={1}
            step={1}
            data-testid="jp-condatainer-create-size"
            defaultValue={initial.sizeMb}
          />
        </label>
        <label className="jp-condatainer-field">
          <span>{trans.__('Packages')}</span>
          <input
            className="jp-mod-styled"
            name="packages"
            data-testid="jp-condatainer-create-packages"
            defaultValue={initial.packages}
            placeholder={trans.__('Empty: the server default set')}
          />
        </label>
        <label className="jp-condatainer-field">
          <span>{trans.__('Channels')}</span>
          <input
            className="jp-mod-styled"
            name="channels"
            data-testid="jp-condatainer-create-channels"
            defaultValue={initial.channels}
            placeholder={trans.__('Empty: the server default channels')}
          />
        </label>
        <p className="jp-condatainer-hint">
          {trans.__('Separate packages and channels with spaces or commas.')}
        </p>
        <label className="jp-condatainer-checkbox">
          <input
            name="register"
            type="checkbox"
            data-testid="jp-condatainer-create-register"
            defaultChecked={initial.registerKernel}
          />
          <span>{trans.__('Register as a Jupyter kernel')}</span>
        </label>
      </>
    );
  }
}
