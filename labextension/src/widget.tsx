import type { ServerConnection } from '@jupyterlab/services';
import type { ITranslator } from '@jupyterlab/translation';
import { ReactWidget, SidePanel } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';
import type { AccordionPanel } from '@lumino/widgets';
import * as React from 'react';

import { condatainerIcon } from './icon';
import type { LaunchStore } from './launch';
import { DiskSection } from './disk';
import { LaunchSection } from './launchview';
import type { LifecycleClient } from './lifecycle';
import type { CondaTainerModel } from './model';
import type { IPanelActions } from './sections/common';
import { HistorySection } from './sections/history';
import { JobsSection } from './sections/jobs';
import { OverlaysSection } from './sections/overlays';
import { PackagesSection } from './sections/packages';
import { PANEL_ID, TRANSLATION_DOMAIN } from './tokens';

/**
 * The CondaTainer sidebar: a header and three accordion sections
 * (overlays, the selected env's packages, jobs) over one shared model.
 */
export class CondaTainerPanel extends SidePanel {
  constructor(options: CondaTainerPanel.IOptions) {
    const { model, translator, actions } = options;
    super({ translator });
    this.model = model;
    const trans = translator.load(TRANSLATION_DOMAIN);

    this.id = PANEL_ID;
    this.addClass('jp-condatainer-panel');
    this.node.dataset.testid = 'jp-condatainer-panel';
    this.node.setAttribute('role', 'region');
    this.node.setAttribute('aria-label', trans.__('CondaTainer section'));
    this.title.icon = condatainerIcon;
    this.title.caption = trans.__('CondaTainer');

    this.header.addWidget(
      ReactWidget.create(
        <h2 className="jp-condatainer-title">{trans.__('CondaTainer')}</h2>
      )
    );
    this.addWidget(new OverlaysSection(model, trans, actions));
    this.addWidget(new PackagesSection(model, trans));
    this.addWidget(new JobsSection(model, trans));
    if (options.lifecycle) {
      this.addWidget(new HistorySection(model, trans, options.lifecycle));
    }
    if (options.launches) {
      this.addWidget(
        new LaunchSection(options.launches, trans, options.serverSettings)
      );
    }
    if (options.serverSettings) {
      this.addWidget(new DiskSection(model, options.serverSettings, trans));
    }
    // The overlay list is the longest and the panel's starting point.
    const others = this.widgets.length - 1;
    (this.content as AccordionPanel).setRelativeSizes([
      2,
      ...Array(others).fill(1)
    ]);
  }

  readonly model: CondaTainerModel;

  /** The model refreshes only while the panel can be seen. */
  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    this.model.setVisible(true);
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    this.model.setVisible(false);
  }

  protected onAfterAttach(msg: Message): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this.model.setVisible(true);
    }
  }
}

export namespace CondaTainerPanel {
  export interface IOptions {
    model: CondaTainerModel;
    translator: ITranslator;
    actions: IPanelActions;
    /** The env history/rollback/export/freeze routes; no History section without. */
    lifecycle?: LifecycleClient;
    /** Kernel starts (launch progress); no "Kernel starts" section without. */
    launches?: LaunchStore;
    /** The server to ask for disk use; no Disk section without. */
    serverSettings?: ServerConnection.ISettings;
  }
}
