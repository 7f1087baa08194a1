import type { Event } from '@jupyterlab/services';
import type { TranslationBundle } from '@jupyterlab/translation';
import { VDomModel } from '@jupyterlab/ui-components';
import { Debouncer, Poll } from '@lumino/polling';
import { Signal } from '@lumino/signaling';
import type { ISignal } from '@lumino/signaling';

import type { CondaTainerClient } from './client';
import { parseList } from './format';
import { jobFromEvent } from './jobs';
import { JobStore } from './jobstore';
import { findWritable, kernelsDiffer, sortByName } from './overlays';
import { errorMessage } from './request';
import { FALLBACK_POLL_MS, STATUS_POLL_MS } from './tokens';
import type {
  IBrokenKernel,
  ICreateEnvRequest,
  IJob,
  IMadeKernel,
  IOverlay,
  IPackage
} from './tokens';

/**
 * Keys under which the model records the error of an action, so the panel
 * can show each message next to the control that caused it.
 */
export namespace ActionKeys {
  export const listOverlays = 'list-overlays';
  export const listJobs = 'list-jobs';
  export const listPackages = 'list-packages';
  export const deleteOverlay = (name: string) => `delete:${name}`;
  export const openNotebook = (name: string) => `open:${name}`;
  export const openTerminal = (name: string) => `terminal:${name}`;
  export const install = (name: string) => `install:${name}`;
  export const remove = (name: string, pkg: string) => `remove:${name}:${pkg}`;
  export const cancel = (id: string) => `cancel:${id}`;
  export const makeKernel = (name: string) => `make-kernel:${name}`;
}

/**
 * State of the CondaTainer panel: overlays, the selected env's packages,
 * jobs, and per-action busy flags and errors.
 *
 * Live job updates come from jupyter_server's event bus. A 5 s poll of
 * `GET jobs` stands in only while a job is active and the bus has been
 * silent for as long, so a server without the bus still shows progress.
 */
export class CondaTainerModel extends VDomModel {
  constructor(options: CondaTainerModel.IOptions) {
    super();
    this._client = options.client;
    this._trans = options.trans;
    this._events = options.events ?? null;
    this._events?.stream.connect(this._onEvent, this);

    this.jobs.changed.connect(this._emit, this);
    this.jobs.finished.connect(this._onJobFinished, this);

    this._fallbackPoll = new Poll({
      factory: () => this.refreshJobs(),
      frequency: { interval: FALLBACK_POLL_MS, backoff: false },
      name: 'jupyter-condatainer:jobs-fallback',
      standby: () => (this._needsFallbackPoll() ? 'when-hidden' : true)
    });
    this._refreshPoll = new Poll({
      factory: () => this.refresh(),
      frequency: { interval: Poll.NEVER, backoff: false },
      name: 'jupyter-condatainer:refresh',
      standby: () => (this._visible ? 'when-hidden' : true)
    });
    this._statusPoll = new Poll({
      factory: () => this.checkStatus(),
      frequency: { interval: STATUS_POLL_MS, backoff: true, max: 60000 },
      name: 'jupyter-condatainer:status',
      standby: () => (this._visible ? 'when-hidden' : true)
    });
  }

  /**
   * Why no conda channel can be reached, as the server knows it, or "":
   * the panel says it before a user starts "New env".
   */
  get channelProblem(): string {
    return this._channelProblem;
  }

  /**
   * Ask the server's cheap status; reload when images, kernels or
   * instances changed since the last answer (the magic, the CLI, another
   * server changed them).
   */
  async checkStatus(): Promise<void> {
    const status = await this._client.status();
    const changed =
      this._generation !== '' && status.generation !== this._generation;
    this._generation = status.generation;
    if (status.channel_problem !== this._channelProblem) {
      this._channelProblem = status.channel_problem;
      this._emit();
    }
    if (changed) {
      await this.refresh();
    }
  }

  /**
   * Make a kernel for a stack of overlays (an env, or any custom stack);
   * null when it failed (the error is kept under `key`).
   */
  async makeKernel(
    key: string,
    overlays: string[],
    label: string
  ): Promise<IMadeKernel | null> {
    let made: IMadeKernel | null = null;
    await this._run(ActionKeys.makeKernel(key), async () => {
      made = await this._client.makeKernel(overlays, label);
      this._kernelsChanged.emit();
    });
    if (made) {
      await this.refreshOverlays();
    }
    return made;
  }

  /** Jobs known to the panel; see `JobStore`. */
  readonly jobs = new JobStore();

  /**
   * Emitted when the overlays' set of kernelspecs changed (an env was
   * created or deleted), so the launcher's kernel list can be refreshed.
   */
  get kernelsChanged(): ISignal<this, void> {
    return this._kernelsChanged;
  }

  /** Directories the server scans for images and overlays. */
  get imageDirs(): ReadonlyArray<string> {
    return this._imageDirs;
  }

  /** Kernels whose stack cannot start now, and why. */
  get brokenKernels(): ReadonlyArray<IBrokenKernel> {
    return this._brokenKernels;
  }

  /** All overlays, sorted by name; null until the first answer. */
  get overlays(): ReadonlyArray<IOverlay> | null {
    return this._overlays;
  }

  /** Name of the writable env whose packages are shown, if any. */
  get selected(): string | null {
    return this._selected;
  }

  /** Packages of the selected env; null while not loaded. */
  get packages(): ReadonlyArray<IPackage> | null {
    return this._packages;
  }

  /** The message of the last failure of an action, or null. */
  error(key: string): string | null {
    return this._errors.get(key) ?? null;
  }

  clearError(key: string): void {
    if (this._errors.delete(key)) {
      this._emit();
    }
  }

  /** Record a failure that happened outside the model (e.g. a command). */
  setError(key: string, error: unknown): void {
    this._errors.set(key, errorMessage(error, this._trans));
    this._emit();
  }

  /** True while a request for that action is in flight. */
  isBusy(key: string): boolean {
    return this._busy.has(key);
  }

  /** Apply user settings (see `schema/plugin.json`). */
  configure(settings: CondaTainerModel.ISettings): void {
    this.jobs.tailLength = settings.logLines;
    this.jobs.maxFinished = settings.maxFinishedJobs;
    const interval =
      settings.refreshInterval > 0
        ? settings.refreshInterval * 1000
        : Poll.NEVER;
    if (interval !== this._refreshPoll.frequency.interval) {
      this._refreshPoll.frequency = {
        interval,
        backoff: false,
        max: Poll.NEVER
      };
      // A poll waiting out its old interval (possibly "never") would not see
      // the new one until its next tick: restart the schedule now.
      void this._refreshPoll.refresh();
    }
    this._emit();
  }

  /**
   * Tell the model whether the panel is on screen. Periodic refreshes run
   * only then; showing the panel refreshes at once.
   */
  setVisible(visible: boolean): void {
    const shown = visible && !this._visible;
    this._visible = visible;
    if (shown) {
      void this.refresh();
    }
  }

  /** Reload overlays, jobs and the selected env's packages. */
  async refresh(): Promise<void> {
    await Promise.all([
      this.refreshOverlays(),
      this.refreshJobs(),
      this._selected ? this.refreshPackages() : Promise.resolve()
    ]);
  }

  refreshOverlays(): Promise<void> {
    return this._run(ActionKeys.listOverlays, async () => {
      const reply = await this._client.listOverlays();
      const kernelsChanged =
        this._overlays !== null &&
        kernelsDiffer(this._overlays, reply.overlays);
      this._imageDirs = reply.image_dirs;
      this._brokenKernels = reply.broken_kernels ?? [];
      this._overlays = sortByName(reply.overlays);
      if (kernelsChanged) {
        this._kernelsChanged.emit();
      }
      // The selected env may have been deleted elsewhere.
      if (this._selected && !findWritable(this._overlays, this._selected)) {
        this._selected = null;
        this._packages = null;
      }
    });
  }

  refreshJobs(): Promise<void> {
    return this._run(ActionKeys.listJobs, async () => {
      this.jobs.reset(await this._client.listJobs());
    });
  }

  refreshPackages(): Promise<void> {
    const name = this._selected;
    if (!name) {
      return Promise.resolve();
    }
    return this._run(ActionKeys.listPackages, async () => {
      const packages = await this._client.listPackages(name);
      // Ignore an answer for an env that is no longer selected.
      if (this._selected === name) {
        this._packages = packages;
      }
    });
  }

  /** Show the packages of a writable env; selecting it again hides them. */
  select(name: string | null): void {
    const next = name === this._selected ? null : name;
    if (next !== null && !findWritable(this._overlays, next)) {
      return;
    }
    this._selected = next;
    this._packages = null;
    this._errors.delete(ActionKeys.listPackages);
    this._emit();
    void this.refreshPackages();
  }

  /**
   * Start a job that creates a writable env. Unlike the other actions this
   * throws, because the dialog that asked for it shows the error itself.
   */
  async createEnv(request: ICreateEnvRequest): Promise<IJob> {
    const job = await this._client.createEnv(request);
    this.jobs.upsert(job);
    return job;
  }

  deleteOverlay(name: string): Promise<void> {
    return this._run(ActionKeys.deleteOverlay(name), async () => {
      await this._client.deleteOverlay(name);
      if (this._selected === name) {
        this._selected = null;
        this._packages = null;
      }
      await this.refreshOverlays();
    });
  }

  /** Install the specs typed by the user (comma or space separated). */
  installPackages(name: string, specsText: string): Promise<void> {
    const key = ActionKeys.install(name);
    const specs = parseList(specsText);
    if (specs.length === 0) {
      this._errors.set(key, this._trans.__('Type a package spec first.'));
      this._emit();
      return Promise.resolve();
    }
    return this._run(key, async () => {
      if (
        this.confirmChange &&
        !(await this.confirmChange(name, 'install', specs))
      ) {
        return;
      }
      this.jobs.upsert(await this._client.installPackages(name, specs));
    });
  }

  removePackage(name: string, pkg: string): Promise<void> {
    return this._run(ActionKeys.remove(name, pkg), async () => {
      if (
        this.confirmChange &&
        !(await this.confirmChange(name, 'remove', [pkg]))
      ) {
        return;
      }
      this.jobs.upsert(await this._client.removePackages(name, [pkg]));
    });
  }

  /**
   * Asked before a package change runs (the preview of `preview.tsx`);
   * resolves false to leave the env alone. None: changes run at once.
   */
  confirmChange:
    | ((
        env: string,
        verb: 'install' | 'remove',
        specs: string[]
      ) => Promise<boolean>)
    | null = null;

  cancelJob(id: string): Promise<void> {
    return this._run(ActionKeys.cancel(id), async () => {
      this.jobs.upsert(await this._client.cancelJob(id));
    });
  }

  /** The whole log of a job (the store keeps only its tail). */
  async fullLog(id: string): Promise<string[]> {
    const job = await this._client.getJob(id);
    return job.log ?? job.log_tail ?? [];
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._events?.stream.disconnect(this._onEvent, this);
    this._fallbackPoll.dispose();
    this._refreshPoll.dispose();
    this._statusPoll.dispose();
    this._followUp.dispose();
    Signal.clearData(this);
    super.dispose();
  }

  /**
   * Run one action: mark it busy, clear its previous error, and keep the
   * server's message if it fails, for the panel to show beside the control.
   */
  private async _run(key: string, action: () => Promise<void>): Promise<void> {
    this._busy.add(key);
    this._errors.delete(key);
    this._emit();
    try {
      await action();
    } catch (error) {
      this._errors.set(key, errorMessage(error, this._trans));
    } finally {
      this._busy.delete(key);
      this._emit();
    }
  }

  private _onEvent(_: Event.IManager, emission: Event.Emission): void {
    const job = jobFromEvent(emission);
    if (job) {
      this._lastEventAt = Date.now();
      this.jobs.upsert(job);
    }
  }

  /** A finished job may have changed overlays, kernels or packages. */
  private _onJobFinished(_: JobStore, job: IJob): void {
    this._followUpTargets.add(job.target);
    void this._followUp.invoke();
  }

  /** Coalesces the refreshes after several jobs end at about the same time. */
  private async _refreshAfterJobs(): Promise<void> {
    const targets = this._followUpTargets;
    this._followUpTargets = new Set();
    await Promise.all([
      this.refreshOverlays(),
      this._selected && targets.has(this._selected)
        ? this.refreshPackages()
        : Promise.resolve()
    ]);
  }

  private _needsFallbackPoll(): boolean {
    const silentFor = Date.now() - this._lastEventAt;
    return this.jobs.active.length > 0 && silentFor >= FALLBACK_POLL_MS;
  }

  private _emit(): void {
    if (!this.isDisposed) {
      this.stateChanged.emit();
    }
  }

  private _client: CondaTainerClient;
  private _trans: TranslationBundle;
  private _events: Event.IManager | null;
  private _overlays: IOverlay[] | null = null;
  private _imageDirs: string[] = [];
  private _brokenKernels: IBrokenKernel[] = [];
  private _selected: string | null = null;
  private _packages: IPackage[] | null = null;
  private _errors = new Map<string, string>();
  private _busy = new Set<string>();
  private _visible = false;
  private _lastEventAt = 0;
  private _fallbackPoll: Poll;
  private _refreshPoll: Poll;
  private _statusPoll: Poll;
  private _generation = '';
  private _channelProblem = '';
  private _followUpTargets = new Set<string>();
  private _followUp = new Debouncer(() => this._refreshAfterJobs(), 500);
  private _kernelsChanged = new Signal<this, void>(this);
}

export namespace CondaTainerModel {
  export interface IOptions {
    client: CondaTainerClient;
    /** Translation bundle for messages the model makes itself. */
    trans: TranslationBundle;
    /** jupyter_server's event bus; without it the model polls. */
    events?: Event.IManager | null;
  }

  /** The user settings of `schema/plugin.json`. */
  export interface ISettings {
    /** Seconds between refreshes while the panel is visible; 0 = never. */
    refreshInterval: number;
    /** Finished jobs listed below the running ones. */
    maxFinishedJobs: number;
    /** Log lines shown per job. */
    logLines: number;
  }

  export const defaultSettings: ISettings = {
    refreshInterval: 30,
    maxFinishedJobs: 5,
    logLines: 5
  };
}
