import type { JupyterFrontEnd } from '@jupyterlab/application';
import type { Widget } from '@lumino/widgets';

import { terminalPath } from './overlays';
import type { TerminalTarget } from './overlays';
import { requestAPI } from './request';

/** The command that opens a terminal in a kernel's container. */
export const OPEN_KERNEL_TERMINAL = 'condatainer:open-kernel-terminal';

/**
 * Open a JupyterLab terminal whose shell runs in a CondaTainer stack: a
 * running kernel's container, or the stack a kernel on an overlay or env
 * would run (no kernel). The server creates it with that shell, then it
 * opens like any terminal (`terminal:open` with its name).
 */
export async function openStackTerminal(
  app: JupyterFrontEnd,
  target: TerminalTarget
): Promise<void> {
  const model = await requestAPI<{ name: string }>(
    terminalPath(target),
    app.serviceManager.serverSettings,
    { method: 'POST' }
  );
  await app.commands.execute('terminal:open', { name: model.name });
}

/** The kernel id of a notebook or console widget, if it has a running kernel. */
export function kernelIdOf(widget: Widget | null): string | null {
  const context = (
    widget as unknown as {
      sessionContext?: { session?: { kernel?: { id?: string } | null } | null };
    } | null
  )?.sessionContext;
  return context?.session?.kernel?.id ?? null;
}
