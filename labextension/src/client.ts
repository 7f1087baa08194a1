import type { ServerConnection } from '@jupyterlab/services';

import { requestAPI } from './request';
import type {
  ICreateEnvRequest,
  IJob,
  IMadeKernel,
  IOverlayList,
  IPackage,
  IStatus
} from './tokens';

/**
 * Typed calls of the CondaTainer REST API, one method per route.
 *
 * Kept free of state so the model can be tested with a fake client.
 */
export class CondaTainerClient {
  constructor(readonly serverSettings: ServerConnection.ISettings) {}

  listOverlays(): Promise<IOverlayList> {
    return this._call<IOverlayList>('overlays');
  }

  /** Start a job that creates a writable env (202). */
  async createEnv(request: ICreateEnvRequest): Promise<IJob> {
    const reply = await this._call<{ job: IJob }>('overlays', {
      method: 'POST',
      body: request
    });
    return reply.job;
  }

  /** Delete an overlay file; the server answers 409 while it is in use. */
  async deleteOverlay(name: string): Promise<void> {
    await this._call<void>(overlayPath(name), { method: 'DELETE' });
  }

  async listPackages(name: string): Promise<IPackage[]> {
    const reply = await this._call<{ packages: IPackage[] }>(
      `${overlayPath(name)}/packages`
    );
    return reply.packages;
  }

  async installPackages(
    name: string,
    specs: string[],
    channels: string[] = []
  ): Promise<IJob> {
    const reply = await this._call<{ job: IJob }>(
      `${overlayPath(name)}/packages`,
      { method: 'POST', body: { specs, channels } }
    );
    return reply.job;
  }

  async removePackages(name: string, specs: string[]): Promise<IJob> {
    const reply = await this._call<{ job: IJob }>(
      `${overlayPath(name)}/packages`,
      { method: 'DELETE', body: { specs } }
    );
    return reply.job;
  }

  /** The cheap status the panel polls: a generation and the channel problem. */
  status(): Promise<IStatus> {
    return this._call<IStatus>('status');
  }

  /** Make a kernel for an env or a custom stack of overlays (201). */
  makeKernel(overlays: string[], label: string): Promise<IMadeKernel> {
    return this._call<IMadeKernel>('kernelspecs', {
      method: 'POST',
      body: { overlays, label }
    });
  }

  async listJobs(): Promise<IJob[]> {
    const reply = await this._call<{ jobs: IJob[] }>('jobs');
    return reply.jobs;
  }

  getJob(id: string): Promise<IJob> {
    return this._call<IJob>(`jobs/${encodeURIComponent(id)}`);
  }

  /** Cancel a job; returns the job in its new state. */
  cancelJob(id: string): Promise<IJob> {
    return this._call<IJob>(`jobs/${encodeURIComponent(id)}`, {
      method: 'DELETE'
    });
  }

  private _call<T>(
    endPoint: string,
    init: Parameters<typeof requestAPI>[2] = {}
  ): Promise<T> {
    return requestAPI<T>(endPoint, this.serverSettings, init);
  }
}

/**
 * URL path of one overlay. Names hold `/` (`python/3.11`), which must stay
 * inside one path segment, hence `encodeURIComponent` (`python%2F3.11`).
 */
function overlayPath(name: string): string {
  return `overlays/${encodeURIComponent(name)}`;
}
