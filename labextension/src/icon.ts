import { LabIcon } from '@jupyterlab/ui-components';

/**
 * The CondaTainer icon: a container holding stacked overlay layers.
 *
 * Inline so that no asset loader is involved. The `jp-icon3` class lets the
 * theme recolour the shapes (dark theme included); `fill` is only the
 * fallback outside JupyterLab's stylesheets.
 */
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M4 3h16a1 1 0 0 1 1 1v16a1 1 0 0 1-1 1H4a1 1 0 0 1-1-1V4a1 1 0 0 1 1-1zm1 2v14h14V5H5z"/>
    <rect x="7" y="7" width="10" height="2.5" rx="0.6"/>
    <rect x="7" y="10.75" width="10" height="2.5" rx="0.6"/>
    <rect x="7" y="14.5" width="6" height="2.5" rx="0.6"/>
  </g>
</svg>`;

export const condatainerIcon = new LabIcon({
  name: 'jupyter-condatainer:icon',
  svgstr
});
