import type { IJob, IOverlay, IPackage } from '../src/tokens';

/** A running job; fields can be overridden. */
export function makeJob(fields: Partial<IJob> = {}): IJob {
  return {
    id: 'job1',
    kind: 'install',
    target: 'env/1.0',
    state: 'running',
    progress: 0.5,
    message: 'installing',
    error: null,
    created: 100,
    finished: null,
    ...fields
  };
}

/** A writable env without a kernel; fields can be overridden. */
export function makeOverlay(fields: Partial<IOverlay> = {}): IOverlay {
  return {
    name: 'env/1.0',
    kind: 'img',
    path: '/images/env--1.0.img',
    size: 1024,
    whatis: '',
    notes: {},
    in_use: false,
    kernelspec: null,
    writable: true,
    ...fields
  };
}

export function makePackage(name: string): IPackage {
  return { name, version: '1.0', build: 'py_0', channel: 'conda-forge' };
}
