/**
 * The "New env" form's values and their check, apart from the dialog so
 * they are unit-tested directly.
 */

import type { TranslationBundle } from '@jupyterlab/translation';

import { parseList } from './format';
import type { ICreateEnvRequest } from './tokens';

/** What the user typed, kept as text so a failed attempt can be re-shown. */
export interface IEnvFormValues {
  name: string;
  sizeMb: string;
  packages: string;
  channels: string;
  registerKernel: boolean;
}

export const DEFAULT_ENV_FORM: IEnvFormValues = {
  name: '',
  sizeMb: '1024',
  packages: '',
  channels: '',
  registerKernel: true
};

/** Turn the form into a request body, or return what is wrong with it. */
export function envRequestFromForm(
  values: IEnvFormValues,
  trans: TranslationBundle
): ICreateEnvRequest | string {
  const name = values.name.trim();
  if (!name) {
    return trans.__('Give the env a name.');
  }
  const size = Number(values.sizeMb);
  if (!Number.isInteger(size) || size <= 0) {
    return trans.__('The size must be a whole number of MB above zero.');
  }
  return {
    name,
    size_mb: size,
    packages: parseList(values.packages),
    channels: parseList(values.channels),
    register_kernel: values.registerKernel
  };
}
