import { Dialog, showDialog } from '@jupyterlab/apputils';
import type { ServerConnection } from '@jupyterlab/services';
import type { TranslationBundle } from '@jupyterlab/translation';
import * as React from 'react';

import { formatBytes } from './format';
import { requestAPI } from './request';
import { ErrorText } from './sections/common';

/** A package as the solver's plan lists it. */
export interface IPlanPackage {
  name: string;
  version: string;
  build: string;
  channel: string;
  size: number;
}

/** A package whose version or build changes. */
export interface IPlanChange {
  name: string;
  from: string;
  to: string;
  channel: string;
  size: number;
}

/** The solver's plan for a change (`dry_run` on `…/packages`). */
export interface IChangePlan {
  env: string;
  verb: 'install' | 'update' | 'remove';
  specs: string[];
  added: IPlanPackage[];
  removed: IPlanPackage[];
  upgraded: IPlanChange[];
  downgraded: IPlanChange[];
  changed: IPlanChange[];
  download_bytes: number;
  download_count: number;
  /**
   * Set when the change would not fit in the env's free space: the refusal
   * the server would give if it were applied (first line: what to do).
   */
  space_warning?: string;
}

const METHODS = { install: 'POST', update: 'PATCH', remove: 'DELETE' };

/** Ask the server for the plan of a change; nothing changes. */
export async function previewChange(
  settings: ServerConnection.ISettings,
  env: string,
  verb: IChangePlan['verb'],
  specs: string[],
  channels: string[] = []
): Promise<IChangePlan> {
  const reply = await requestAPI<{ plan: IChangePlan }>(
    `overlays/${encodeURIComponent(env)}/packages`,
    settings,
    { method: METHODS[verb], body: { specs, channels, dry_run: true } }
  );
  return reply.plan;
}

/** Whether the plan would change nothing. */
export function isEmptyPlan(plan: IChangePlan): boolean {
  return (
    plan.added.length +
      plan.removed.length +
      plan.upgraded.length +
      plan.downgraded.length +
      plan.changed.length ===
    0
  );
}

/** The plan as rows: a sign, the package, what happens to it. */
export function planRows(
  plan: IChangePlan
): { sign: string; name: string; detail: string }[] {
  return [
    ...plan.added.map(p => ({
      sign: '+',
      name: p.name,
      detail: `${p.version} (${p.build}, ${p.channel})`
    })),
    ...(
      [
        ['↑', plan.upgraded],
        ['↓', plan.downgraded],
        ['~', plan.changed]
      ] as [string, IPlanChange[]][]
    ).flatMap(([sign, changes]) =>
      changes.map(p => ({ sign, name: p.name, detail: `${p.from} → ${p.to}` }))
    ),
    ...plan.removed.map(p => ({
      sign: '−',
      name: p.name,
      detail: `${p.version} (${p.build})`
    }))
  ];
}

function PlanView(props: {
  plan: IChangePlan;
  trans: TranslationBundle;
}): React.ReactElement {
  const { plan, trans } = props;
  const rows = planRows(plan);
  return (
    <div className="jp-condatainer-plan" data-testid="jp-condatainer-plan">
      <table>
        <tbody>
          {rows.map(row => (
            <tr key={`${row.sign}${row.name}`}>
              <td className="jp-condatainer-plan-sign">{row.sign}</td>
              <td>{row.name}</td>
              <td>{row.detail}</td>
            </tr>
          ))}
        </tbody>
      </table>
      {plan.space_warning && (
        <div role="alert">
          <ErrorText message={plan.space_warning} />
        </div>
      )}
      <p>
        {plan.download_count > 0
          ? trans.__(
              'Download: %1 (%2 packages).',
              formatBytes(plan.download_bytes),
              plan.download_count
            )
          : trans.__('Nothing to download.')}
      </p>
    </div>
  );
}

/**
 * Show the solver's plan for a change and ask whether to apply it. Resolves
 * true to go ahead; false when the user cancels or the plan is empty (after
 * saying so). A change that would not fit is shown with why and no Apply: the
 * server would refuse it. A plan that cannot be made rejects with the
 * solver's message.
 */
export async function confirmWithPreview(
  settings: ServerConnection.ISettings,
  env: string,
  verb: IChangePlan['verb'],
  specs: string[],
  trans: TranslationBundle
): Promise<boolean> {
  const plan = await previewChange(settings, env, verb, specs);
  if (isEmptyPlan(plan)) {
    await showDialog({
      title: trans.__('Nothing to change in %1', env),
      body: trans.__('Every requested package is installed already.'),
      buttons: [Dialog.okButton({ label: trans.__('OK') })]
    });
    return false;
  }
  if (plan.space_warning) {
    await showDialog({
      title: trans.__('%1 %2 would not fit in %3', verb, specs.join(' '), env),
      body: <PlanView plan={plan} trans={trans} />,
      buttons: [Dialog.cancelButton({ label: trans.__('Close') })]
    });
    return false;
  }
  const result = await showDialog({
    title: trans.__('%1 %2 in %3?', verb, specs.join(' '), env),
    body: <PlanView plan={plan} trans={trans} />,
    buttons: [
      Dialog.cancelButton({ label: trans.__('Cancel') }),
      Dialog.okButton({ label: trans.__('Apply') })
    ]
  });
  return result.button.accept;
}
