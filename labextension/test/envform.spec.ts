import type { TranslationBundle } from '@jupyterlab/translation';

import { DEFAULT_ENV_FORM, envRequestFromForm } from '../src/envform';

/** Returns the message untranslated, as JupyterLab's null translator does. */
const trans = { __: (message: string) => message } as TranslationBundle;

describe('envRequestFromForm', () => {
  it('turns the typed values into a request', () => {
    const request = envRequestFromForm(
      {
        name: ' my-env ',
        sizeMb: '2048',
        packages: 'numpy, scipy>=1.11',
        channels: 'conda-forge',
        registerKernel: false
      },
      trans
    );
    expect(request).toEqual({
      name: 'my-env',
      size_mb: 2048,
      packages: ['numpy', 'scipy>=1.11'],
      channels: ['conda-forge'],
      register_kernel: false
    });
  });

  it('asks for a name', () => {
    const values = { ...DEFAULT_ENV_FORM, name: '  ' };
    expect(envRequestFromForm(values, trans)).toBe('Give the env a name.');
  });

  it.each(['0', '-5', '1.5', 'big', ''])('refuses the size %p', sizeMb => {
    const values = { ...DEFAULT_ENV_FORM, name: 'env', sizeMb };
    expect(envRequestFromForm(values, trans)).toBe(
      'The size must be a whole number of MB above zero.'
    );
  });

  it('leaves packages and channels empty by default', () => {
    const values = { ...DEFAULT_ENV_FORM, name: 'env' };
    expect(envRequestFromForm(values, trans)).toMatchObject({
      size_mb: 1024,
      packages: [],
      channels: [],
      register_kernel: true
    });
  });
});
