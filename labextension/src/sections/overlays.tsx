import { Dialog, showDialog } from '@jupyterlab/apputils';
import type { TranslationBundle } from '@jupyterlab/translation';
import { addIcon, Button, refreshIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

import { formatBytes } from '../format';
import { ActionKeys } from '../model';
import type { CondaTainerModel } from '../model';
import { groupByKind } from '../overlays';
import type { IOverlay, OverlayKind } from '../tokens';
import { ActionError, Badge, ModelSection } from './common';
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
  const deleteKey = ActionKeys.deleteOverlay(overlay.name);
  const notes = Object.entries(overlay.notes ?? {});

  const openNotebook = async () => {
    model.clearError(openKey);
    try {
      await actions.openNotebook(overlay.kernelspec!);
    } catch (error) {
      model.setError(openKey, error);
    }
  };

  const deleteOverlay = async () => {
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
            title={trans.__('A running kernel uses this overlay')}
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
            small
          >
            {trans.__('Open notebook')}
          </Button>
        )}
        {overlay.writable && (
          <Button
            data-testid="jp-condatainer-packages-button"
            aria-pressed={selected}
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
            title={
              overlay.in_use
                ? trans.__('In use: stop the kernels that use it first')
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
      <ActionError model={model} actionKey={deleteKey} trans={trans} />
    </li>
  );
}
