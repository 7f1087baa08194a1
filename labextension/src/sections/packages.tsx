import type { TranslationBundle } from '@jupyterlab/translation';
import { Button } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import { ActionKeys } from '../model';
import type { CondaTainerModel } from '../model';
import { filterPackages } from '../overlays';
import type { IPackage } from '../tokens';
import { ActionError, ModelSection } from './common';

/**
 * The packages of the selected writable env, with a filter, an install
 * field and a remove button per package.
 */
export class PackagesSection extends ModelSection {
  constructor(model: CondaTainerModel, trans: TranslationBundle) {
    super(model, trans);
    this.addClass('jp-condatainer-packages');
    this.title.label = trans.__('Packages');
  }

  protected onUpdateRequest(msg: Message): void {
    // The accordion title names the env, so it stays visible when scrolled.
    const name = this.model.selected;
    this.title.label = name
      ? this.trans.__('Packages in %1', name)
      : this.trans.__('Packages');
    super.onUpdateRequest(msg);
  }

  protected render(): React.ReactElement {
    const { model, trans } = this;
    const name = model.selected;
    if (!name) {
      return (
        <p className="jp-condatainer-placeholder">
          {trans.__('Choose "Packages" on a writable env to see its packages.')}
        </p>
      );
    }
    // Keyed by env so the typed filter and spec start empty for each env.
    return <EnvPackages key={name} name={name} model={model} trans={trans} />;
  }
}

function EnvPackages(props: {
  name: string;
  model: CondaTainerModel;
  trans: TranslationBundle;
}): React.ReactElement {
  const { name, model, trans } = props;
  const [filter, setFilter] = React.useState('');
  const [spec, setSpec] = React.useState('');
  const installKey = ActionKeys.install(name);
  const busyJob = model.jobs.activeOn(name);

  const install = async () => {
    await model.installPackages(name, spec);
    // Keep the text when the request failed, so it can be corrected.
    if (!model.error(installKey)) {
      setSpec('');
    }
  };

  return (
    <div className="jp-condatainer-env" data-overlay-name={name}>
      <form
        className="jp-condatainer-row jp-condatainer-install"
        onSubmit={event => {
          event.preventDefault();
          void install();
        }}
      >
        <input
          className="jp-mod-styled jp-condatainer-input"
          data-testid="jp-condatainer-install-input"
          placeholder={trans.__('Package specs, e.g. numpy scipy>=1.11')}
          aria-label={trans.__('Packages to install')}
          value={spec}
          onChange={event => setSpec(event.target.value)}
        />
        <Button
          type="submit"
          data-testid="jp-condatainer-install-button"
          disabled={model.isBusy(installKey)}
          small
        >
          {trans.__('Install')}
        </Button>
      </form>
      <ActionError model={model} actionKey={installKey} trans={trans} />
      {busyJob && (
        <p className="jp-condatainer-hint">
          {trans.__('A job (%1) is running on this env.', busyJob.kind)}
        </p>
      )}
      <input
        className="jp-mod-styled jp-condatainer-input jp-condatainer-filter"
        data-testid="jp-condatainer-package-filter"
        type="search"
        placeholder={trans.__('Filter packages')}
        aria-label={trans.__('Filter packages')}
        value={filter}
        onChange={event => setFilter(event.target.value)}
      />
      <ActionError
        model={model}
        actionKey={ActionKeys.listPackages}
        trans={trans}
      />
      <PackageList name={name} filter={filter} model={model} trans={trans} />
    </div>
  );
}

function PackageList(props: {
  name: string;
  filter: string;
  model: CondaTainerModel;
  trans: TranslationBundle;
}): React.ReactElement {
  const { name, filter, model, trans } = props;
  const packages = model.packages;
  if (packages === null) {
    return (
      <p className="jp-condatainer-placeholder">
        {model.isBusy(ActionKeys.listPackages) ? trans.__('Loading…') : ''}
      </p>
    );
  }
  const shown = filterPackages(packages, filter);
  if (shown.length === 0) {
    return (
      <p className="jp-condatainer-placeholder">
        {packages.length === 0
          ? trans.__('No packages.')
          : trans.__('No package matches "%1".', filter)}
      </p>
    );
  }
  return (
    <ul className="jp-condatainer-list">
      {shown.map(pkg => (
        <PackageRow
          key={pkg.name}
          env={name}
          pkg={pkg}
          model={model}
          trans={trans}
        />
      ))}
    </ul>
  );
}

function PackageRow(props: {
  env: string;
  pkg: IPackage;
  model: CondaTainerModel;
  trans: TranslationBundle;
}): React.ReactElement {
  const { env, pkg, model, trans } = props;
  const removeKey = ActionKeys.remove(env, pkg.name);
  return (
    <li
      className="jp-condatainer-package-row"
      data-testid="jp-condatainer-package-row"
      data-package-name={pkg.name}
    >
      <div className="jp-condatainer-row">
        <span className="jp-condatainer-package-name">{pkg.name}</span>
        {/* Build and channel only in the tooltip: the sidebar is narrow. */}
        <span
          className="jp-condatainer-package-version"
          title={trans.__('Build %1 from %2', pkg.build, pkg.channel)}
        >
          {pkg.version}
        </span>
        <Button
          data-testid="jp-condatainer-package-remove"
          onClick={() => void model.removePackage(env, pkg.name)}
          disabled={model.isBusy(removeKey)}
          title={trans.__('Remove %1 from %2', pkg.name, env)}
          minimal
          small
        >
          {trans.__('Remove')}
        </Button>
      </div>
      <ActionError model={model} actionKey={removeKey} trans={trans} />
    </li>
  );
}
