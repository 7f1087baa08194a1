import {
  Dialog,
  InputDialog,
  Notification,
  showDialog
} from '@jupyterlab/apputils';
import type { TranslationBundle } from '@jupyterlab/translation';
import { addIcon, Button, refreshIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

import { formatBytes } from '../format';
import { ActionKeys } from '../model';
import type { CondaTainerModel } from '../model';
import { groupByKind, offersTerminal } from '../overlays';
import type { IMadeKernel, IOverlay, OverlayKind } from '../tokens';
import { ActionError, Badge, ModelSection, SectionHelp } from './common';
import type { IPanelActions } from './common';

/**
 * The overlays, grouped into base images, read-only overlays and writable
 * envs, with the actions each one allows.
 */
export class OverlaysSection extends ModelSection {
  constructor(
    model: CondaTainerModel,
    trans: TranslationBundle,
    private readonly _actions: IPanelActions
  ) {
    super(model, trans);
    this.addClass('jp-condatainer-overlays');
    this.title.label = trans.__('Overlays');
  }

  protected render(): React.ReactElement {
    const { model, trans } = this;
    return (
      <>
        <div className="jp-condatainer-row jp-condatainer-overlays-toolbar">
          <Button
            className="jp-condatainer-create-button"
            data-testid="jp-condatainer-create-button"
            onClick={() => void this._actions.newEnv()}
            title={trans.__('Create a writable conda env in a new overlay')}
            small
          >
            <addIcon.react tag="span" className="jp-condatainer-button-icon" />
            {trans.__('New env')}
          </Button>
          <Button
            className="jp-condatainer-make-kernel-button"
            data-testid="jp-condatainer-make-stack-kernel"
            onClick={() => void makeStackKernel(model, trans)}
            title={trans.__(
              'Make a kernel for a stack of overlays of your choice'
            )}
            small
          >
            {trans.__('Make kernel…')}
          </Button>
          <Button
            className="jp-condatainer-refresh-button"
            data-testid="jp-condatainer-refresh-button"
            onClick={() => void model.refresh()}
            disabled={model.isBusy(ActionKeys.listOverlays)}
            title={trans.__('Reload overlays and jobs')}
            minimal
            small
          >
            <refreshIcon.react tag="span" />
          </Button>
        </div>
        {model.channelProblem && (
          <div
            className="jp-condatainer-warning"
            data-testid="jp-condatainer-channel-problem"
            role="status"
          >
            {model.channelProblem}
          </div>
        )}
        {model.brokenKernels.map(kernel => (
          <div
            key={kernel.kernelspec}
            className="jp-condatainer-warning"
            data-testid="jp-condatainer-broken-kernel"
          >
            {trans.__(
              '%1 is broken: %2. Put its images back, or remove it (jupyter condatainer kernelspecs remove %3).',
              kernel.display_name,
              kernel.reason,
              kernel.kernelspec
            )}
          </div>
        ))}
        <ActionError
          model={model}
          actionKey={ActionKeys.makeKernel(STACK_KEY)}
          trans={trans}
        />
        <ActionError
          model={model}
          actionKey={ActionKeys.listOverlays}
          trans={trans}
        />
        {this._renderGroups()}
      </>
    );
  }

  private _renderGroups(): React.ReactNode {
    const { model, trans } = this;
    const overlays = model.overlays;
    if (overlays === null) {
      return model.isBusy(ActionKeys.listOverlays) ? (
        <p className="jp-condatainer-placeholder">{trans.__('Loading…')}</p>
      ) : null;
    }
    if (overlays.length === 0) {
      return (
        <p className="jp-condatainer-placeholder">
          {model.imageDirs.length > 0
            ? trans.__(
                'No images or overlays found in %1.',
                model.imageDirs.join(', ')
              )
            : trans.__('No images or overlays found.')}
        </p>
      );
    }
    return groupByKind(overlays).map(({ kind, overlays: members }) => (
      <div
        key={kind}
        className="jp-condatainer-group"
        data-testid={`jp-condatainer-group-${kind}`}
      >
        <h3 className="jp-condatainer-group-title">
          {groupTitle(kind, trans)}
        </h3>
        <SectionHelp text={groupHelp(kind, trans)} trans={trans} />
        <ul className="jp-condatainer-list">
          {members.map(overlay => (
            <OverlayRow
              key={overlay.name}
              overlay={overlay}
              model={model}
              trans={trans}
              actions={this._actions}
            />
          ))}
        </ul>
      </div>
    ));
  }
}

function groupTitle(kind: OverlayKind, trans: TranslationBundle): string {
  switch (kind) {
    case 'sif':
      return trans.__('Base images');
    case 'sqf':
      return trans.__('Read-only overlays');
    case 'img':
      return trans.__('Writable envs');
  }
}

function groupHelp(kind: OverlayKind, trans: TranslationBundle): string {
  switch (kind) {
    case 'sif':
      return trans.__(
        'The operating system every stack starts from (<distro>--base_image.sif).'
      );
    case 'sqf':
      return trans.__(
        'Packed, read-only software (python/3.11, samtools/1.17) mounted on the base image; combine them with "Make kernel…".'
      );
    case 'img':
      return trans.__(
        'Writable conda envs: install and remove packages here or with %condatainer in a notebook.'
      );
  }
}

/** The action key of the toolbar's "Make kernel…" (a custom stack). */
const STACK_KEY = '*stack*';

/** Ask for a stack of overlays and make its kernel. */
async function makeStackKernel(
  model: CondaTainerModel,
  trans: TranslationBundle
): Promise<void> {
  const answer = await InputDialog.getText({
    title: trans.__('Make a kernel'),
    label: trans.__(
      'Overlays, in order (a Python one is added when none has Python):'
    ),
    placeholder: trans.__('python/3.11 samtools/1.17'),
    okLabel: trans.__('Make kernel')
  });
  const overlays = (answer.value ?? '').split(/[\s,]+/).filter(Boolean);
  if (answer.button.accept && overlays.length > 0) {
    await madeKernelNotice(
      await model.makeKernel(STACK_KEY, overlays, ''),
      trans
    );
  }
}

/** Say what "Make kernel…" made, including what the server added. */
async function madeKernelNotice(
  made: IMadeKernel | null,
  trans: TranslationBundle
): Promise<void> {
  if (made) {
    Notification.success(
      trans.__(
        'Kernel "%1" made (stack: %2). %3',
        made.display_name,
        made.overlays.join(' + '),
        made.note
      ),
      { autoClose: 8000 }
    );
  }
}

/** One overlay: name, size, description, notes and its buttons. */
function OverlayRow(props: {
  overlay: IOverlay;
  model: CondaTainerModel;
  trans: TranslationBundle;
  actions: IPanelActions;
}): React.ReactElement {
  const { overlay, model, trans, actions } = props;
  const selected = model.selected === overlay.name;
  const openKey = ActionKeys.openNotebook(overlay.name);
  const terminalKey = ActionKeys.openTerminal(overlay.name);
  const deleteKey = ActionKeys.deleteOverlay(overlay.name);
  const makeKey = ActionKeys.makeKernel(overlay.name);
  const notes = Object.entries(overlay.notes ?? {});

  const openTerminal = async () => {
    model.clearError(terminalKey);
    try {
      await actions.openTerminal(overlay.name);
    } catch (error) {
      model.setError(terminalKey, error);
    }
  };

  const openNotebook = async () => {
    model.clearError(openKey);
    try {
      await actions.openNotebook(overlay.kernelspec!);
    } catch (error) {
      model.setError(openKey, error);
    }
  };

  const makeKernel = async () => {
    const answer = await InputDialog.getText({
      title: trans.__('Make a kernel for %1', overlay.name),
      label: trans.__('Name shown in the Launcher ("CondaTainer: NAME"):'),
      text: overlay.kind === 'img' ? `${overlay.name} (env)` : overlay.name,
      okLabel: trans.__('Make kernel')
    });
    if (answer.button.accept) {
      await madeKernelNotice(
        await model.makeKernel(
          overlay.name,
          [overlay.name],
          answer.value ?? ''
        ),
        trans
      );
    }
  };

  const deleteOverlay = async () => {
    if (overlay.in_use) {
      // Said before the confirmation: the server would refuse it anyway.
      await showDialog({
        title: trans.__('%1 is in use', overlay.name),
        body: trans.__(
          '%1 is in use by %2. Shut that down first, then delete it.',
          overlay.name,
          overlay.in_use_by || trans.__('a running kernel')
        ),
        buttons: [Dialog.okButton({ label: trans.__('OK') })]
      });
      return;
    }
    const result = await showDialog({
      title: trans.__('Delete %1?', overlay.name),
      body: trans.__(
        'The overlay file %1 and every package in it will be deleted.',
        overlay.path
      ),
      buttons: [
        Dialog.cancelButton({ label: trans.__('Cancel') }),
        Dialog.warnButton({ label: trans.__('Delete') })
      ]
    });
    if (result.button.accept) {
      await model.deleteOverlay(overlay.name);
    }
  };

  return (
    <li
      className={`jp-condatainer-overlay-row${selected ? ' jp-mod-selected' : ''}`}
      data-testid="jp-condatainer-overlay-row"
      data-overlay-name={overlay.name}
      data-kind={overlay.kind}
    >
      <div className="jp-condatainer-row">
        <span className="jp-condatainer-overlay-name" title={overlay.path}>
          {overlay.name}
        </span>
        {overlay.in_use && (
          <Badge
            kind="in-use"
            title={trans.__(
              'In use by %1',
              overlay.in_use_by || trans.__('a running kernel')
            )}
          >
            {trans.__('in use')}
          </Badge>
        )}
        <span className="jp-condatainer-overlay-size">
          {formatBytes(overlay.size)}
        </span>
      </div>
      {overlay.whatis && (
        <div className="jp-condatainer-overlay-whatis">{overlay.whatis}</div>
      )}
      {(overlay.kernel_stack ?? []).length > 1 && (
        <div
          className="jp-condatainer-overlay-whatis"
          data-testid="jp-condatainer-kernel-stack"
        >
          {trans.__(
            'Its kernel mounts %1',
            (overlay.kernel_stack ?? []).join(' + ')
          )}
        </div>
      )}
      {(overlay.warnings ?? []).map(warning => (
        <div
          key={warning}
          className="jp-condatainer-warning"
          data-testid="jp-condatainer-overlay-warning"
        >
          {warning}
        </div>
      ))}
      {overlay.in_use && overlay.in_use_by && (
        <div
          className="jp-condatainer-overlay-in-use-by"
          data-testid="jp-condatainer-in-use-by"
        >
          {trans.__('In use by %1', overlay.in_use_by)}
        </div>
      )}
      {notes.length > 0 && (
        <dl className="jp-condatainer-notes">
          {notes.map(([key, note]) => (
            <React.Fragment key={key}>
              <dt>{key}</dt>
              <dd>{note}</dd>
            </React.Fragment>
          ))}
        </dl>
      )}
      <div className="jp-condatainer-row jp-condatainer-actions">
        {overlay.kernelspec && (
          <Button
            data-testid="jp-condatainer-open-notebook"
            onClick={() => void openNotebook()}
            title={trans.__('New notebook with kernel %1', overlay.kernelspec)}
            aria-label={trans.__('Open a notebook on %1', overlay.name)}
            small
          >
            {trans.__('Open notebook')}
          </Button>
        )}
        {offersTerminal(overlay) && (
          <Button
            data-testid="jp-condatainer-overlay-terminal"
            onClick={() => void openTerminal()}
            title={
              overlay.kind === 'img'
                ? trans.__(
                    'A shell in the stack a kernel on %1 runs, without a kernel. %1 is mounted read-only: no kernel or install can mount it read-write until you exit the shell.',
                    overlay.name
                  )
                : trans.__(
                    'A shell in the stack a kernel on %1 runs, without a kernel',
                    overlay.name
                  )
            }
            aria-label={trans.__('Open a terminal on %1', overlay.name)}
            minimal
            small
          >
            {trans.__('Terminal')}
          </Button>
        )}
        {!overlay.kernelspec && overlay.kind !== 'sif' && (
          <Button
            data-testid="jp-condatainer-make-kernel"
            onClick={() => void makeKernel()}
            disabled={model.isBusy(makeKey)}
            title={trans.__('Make a kernel for %1', overlay.name)}
            aria-label={trans.__('Make a kernel for %1', overlay.name)}
            minimal
            small
          >
            {trans.__('Make kernel…')}
          </Button>
        )}
        {overlay.writable && (
          <Button
            data-testid="jp-condatainer-packages-button"
            aria-pressed={selected}
            aria-label={trans.__('Packages of %1', overlay.name)}
            onClick={() => model.select(overlay.name)}
            minimal
            small
          >
            {selected ? trans.__('Hide packages') : trans.__('Packages')}
          </Button>
        )}
        {overlay.writable && (
          <Button
            data-testid="jp-condatainer-delete-button"
            onClick={() => void deleteOverlay()}
            disabled={model.isBusy(deleteKey)}
            aria-label={trans.__('Delete %1', overlay.name)}
            title={
              overlay.in_use
                ? trans.__(
                    'In use by %1: shut that down first',
                    overlay.in_use_by || trans.__('a running kernel')
                  )
                : trans.__('Delete this env')
            }
            minimal
            small
          >
            {trans.__('Delete')}
          </Button>
        )}
      </div>
      <ActionError model={model} actionKey={openKey} trans={trans} />
      <ActionError model={model} actionKey={terminalKey} trans={trans} />
      <ActionError model={model} actionKey={makeKey} trans={trans} />
      <ActionError model={model} actionKey={deleteKey} trans={trans} />
    </li>
  );
}
