import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { APIError, requestAPI } from './request';
import type { IJob } from './tokens';

/** A package as a revision's diff names it. */
export interface IRevisionPackage {
  name: string;
  version: string;
  build: string;
  channel: string;
  subdir: string;
}

/** One revision of an env (`GET overlays/{name}/history`). */
export interface IRevision {
  number: number;
  /** As conda-meta/history has it, e.g. `2024-05-01 12:00:00`. */
  time: string;
  user: string;
  /** What was asked for, e.g. `install numpy`, `rollback to revision 2`. */
  command: string;
  /** The tool's command line. */
  cmd: string;
  via: string;
  added: IRevisionPackage[];
  removed: IRevisionPackage[];
  changed: { name: string; from: IRevisionPackage; to: IRevisionPackage }[];
  packages: IRevisionPackage[];
  requested: string[];
}

/** Export formats: `environment.yml` or an `@EXPLICIT` lock. */
export type ExportFormat = 'yml' | 'lock';

/** Body of `POST overlays/{name}/freeze`. */
export interface IFreezeRequest {
  name: string;
  version: string;
  /** Omitted: the latest revision. */
  revision?: number;
  register_kernel?: boolean;
}

/**
 * Calls of the env lifecycle routes: history, export, rollback, freeze.
 */
export class LifecycleClient {
  constructor(readonly serverSettings: ServerConnection.ISettings) {}

  async history(name: string): Promise<IRevision[]> {
    const reply = await requestAPI<{ revisions: IRevision[] }>(
      `${overlayPath(name)}/history`,
      this.serverSettings
    );
    return reply.revisions;
  }

  /** Start a rollback job (202). */
  async rollback(name: string, revision: number): Promise<IJob> {
    const reply = await requestAPI<{ job: IJob }>(
      `${overlayPath(name)}/rollback`,
      this.serverSettings,
      { method: 'POST', body: { revision } }
    );
    return reply.job;
  }

  /** Start a freeze job (202). */
  async freeze(name: string, request: IFreezeRequest): Promise<IJob> {
    const reply = await requestAPI<{ job: IJob }>(
      `${overlayPath(name)}/freeze`,
      this.serverSettings,
      { method: 'POST', body: request }
    );
    return reply.job;
  }

  /** The text of an export and the file name the server suggests. */
  async exportText(
    name: string,
    format: ExportFormat,
    revision: number
  ): Promise<{ filename: string; text: string }> {
    const url =
      URLExt.join(
        this.serverSettings.baseUrl,
        'condatainer/api',
        `${overlayPath(name)}/export`
      ) + URLExt.objectToQueryString({ format, revision: String(revision) });
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(
        url,
        {},
        this.serverSettings
      );
    } catch (error) {
      throw new ServerConnection.NetworkError(error as TypeError);
    }
    const text = await response.text();
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        message = JSON.parse(text).message || message;
      } catch {
        // not JSON: keep the status line
      }
      throw new APIError(response, message, '', true);
    }
    const filename =
      response.headers.get('X-Filename') ||
      `${name.replace('/', '-')}-rev${revision}.${format === 'yml' ? 'yml' : 'lock.txt'}`;
    return { filename, text };
  }
}

/** Save text as a file in the browser's downloads. */
export function downloadText(filename: string, text: string): void {
  const blob = new Blob([text], { type: 'text/plain' });
  const url = URL.createObjectURL(blob);
  const link = document.createElement('a');
  link.href = url;
  link.download = filename;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function overlayPath(name: string): string {
  return `overlays/${encodeURIComponent(name)}`;
}
