import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';
import type { TranslationBundle } from '@jupyterlab/translation';

/** Path of the server extension's REST API, relative to the server's base URL. */
const API_NAMESPACE = 'condatainer/api';

/**
 * An HTTP error from the CondaTainer API.
 *
 * jupyter_server answers errors with `{"message": ..., "reason": ...}`; the
 * `message` is written for people, so it becomes this error's message and is
 * what the panel shows next to the action that failed.
 */
export class APIError extends ServerConnection.ResponseError {
  constructor(
    response: Response,
    message: string,
    reason: string,
    fromAPI: boolean
  ) {
    super(response, message);
    this.reason = reason;
    this.fromAPI = fromAPI;
  }

  /** HTTP status code, e.g. 409 when an overlay is in use. */
  get status(): number {
    return this.response.status;
  }

  /** The server's short reason phrase (may be empty). */
  readonly reason: string;

  /**
   * True when the answer came from the CondaTainer API (a JSON error); false
   * for an HTML page from the server or a proxy, e.g. the 404 of a server
   * where the extension is not enabled.
   */
  readonly fromAPI: boolean;
}

/**
 * Call the CondaTainer REST API and return its JSON body.
 *
 * @param endPoint Path below `condatainer/api/`; callers encode overlay names
 *   with `encodeURIComponent` because they contain `/`.
 * @param settings The server settings (base URL, token, XSRF cookie handling).
 * @param init Fetch options; a `body` given as an object is sent as JSON.
 * @returns The parsed body, or `undefined` for empty answers such as 204.
 */
export async function requestAPI<T>(
  endPoint: string,
  settings: ServerConnection.ISettings,
  init: Omit<RequestInit, 'body'> & { body?: unknown } = {}
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, API_NAMESPACE, endPoint);
  const { body, ...rest } = init;
  const request: RequestInit = { ...rest };
  if (body !== undefined) {
    request.body = JSON.stringify(body);
    request.headers = { 'Content-Type': 'application/json', ...rest.headers };
  }

  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, request, settings);
  } catch (error) {
    throw new ServerConnection.NetworkError(error as TypeError);
  }

  const text = await response.text();
  let data: any = undefined;
  if (text.length > 0) {
    try {
      data = JSON.parse(text);
    } catch {
      // An HTML error page (proxy, or no such route): not worth showing.
      data = undefined;
    }
  }

  if (!response.ok) {
    const fromAPI = typeof data === 'object' && data !== null;
    const message =
      (fromAPI && (data.message || data.reason)) ||
      `${response.status} ${response.statusText}`;
    const reason = (fromAPI && data.reason) || '';
    throw new APIError(response, String(message), String(reason), fromAPI);
  }
  return data as T;
}

/**
 * Plain words for any error raised while talking to the server.
 */
export function errorMessage(error: unknown, trans: TranslationBundle): string {
  if (error instanceof ServerConnection.NetworkError) {
    return trans.__('The Jupyter server cannot be reached.');
  }
  if (error instanceof APIError && error.status === 404 && !error.fromAPI) {
    return trans.__(
      'The CondaTainer server extension is not enabled on this Jupyter server.'
    );
  }
  if (error instanceof Error) {
    return error.message;
  }
  return String(error);
}
