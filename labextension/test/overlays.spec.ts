import {
  filterPackages,
  findWritable,
  groupByKind,
  kernelsDiffer,
  offersTerminal,
  sortByName,
  terminalPath
} from '../src/overlays';
import { makeOverlay, makePackage } from './factories';

describe('sortByName', () => {
  it('sorts a copy by name', () => {
    const overlays = [
      makeOverlay({ name: 'r/4.3' }),
      makeOverlay({ name: 'python/3.11' }),
      makeOverlay({ name: 'bio/1.0' })
    ];
    const names = sortByName(overlays).map(overlay => overlay.name);
    expect(names).toEqual(['bio/1.0', 'python/3.11', 'r/4.3']);
    expect(overlays[0].name).toBe('r/4.3');
  });
});

describe('groupByKind', () => {
  it('lists base images, read-only overlays, then writable envs, in given order', () => {
    const groups = groupByKind([
      makeOverlay({ name: 'env-b', kind: 'img' }),
      makeOverlay({ name: 'tools', kind: 'sqf', writable: false }),
      makeOverlay({ name: 'env-a', kind: 'img' }),
      makeOverlay({ name: 'ubuntu', kind: 'sif', writable: false })
    ]);
    expect(
      groups.map(group => [group.kind, group.overlays.map(o => o.name)])
    ).toEqual([
      ['sif', ['ubuntu']],
      ['sqf', ['tools']],
      ['img', ['env-b', 'env-a']]
    ]);
  });

  it('leaves out kinds without overlays', () => {
    const groups = groupByKind([makeOverlay({ kind: 'img' })]);
    expect(groups.map(group => group.kind)).toEqual(['img']);
  });

  it('has no group for no overlays', () => {
    expect(groupByKind([])).toEqual([]);
  });
});

describe('kernelsDiffer', () => {
  const withKernel = makeOverlay({ name: 'a', kernelspec: 'condatainer-a' });
  const without = makeOverlay({ name: 'b' });

  it('is false when the same kernels are registered, in any order', () => {
    const other = makeOverlay({ name: 'c', kernelspec: 'condatainer-c' });
    expect(
      kernelsDiffer([withKernel, other], [other, without, withKernel])
    ).toBe(false);
  });

  it('is true when a kernel was added or removed', () => {
    expect(kernelsDiffer([without], [without, withKernel])).toBe(true);
    expect(kernelsDiffer([withKernel], [])).toBe(true);
  });
});

describe('findWritable', () => {
  const overlays = [
    makeOverlay({ name: 'env' }),
    makeOverlay({ name: 'tools', kind: 'sqf', writable: false })
  ];

  it('finds a writable env by name', () => {
    expect(findWritable(overlays, 'env')?.name).toBe('env');
  });

  it('finds neither read-only overlays nor unknown names', () => {
    expect(findWritable(overlays, 'tools')).toBeUndefined();
    expect(findWritable(overlays, 'nope')).toBeUndefined();
  });

  it('finds nothing before the overlays are loaded', () => {
    expect(findWritable(null, 'env')).toBeUndefined();
  });
});

describe('filterPackages', () => {
  const packages = ['numpy', 'NumExpr', 'scipy'].map(makePackage);
  const names = (filter: string) =>
    filterPackages(packages, filter).map(pkg => pkg.name);

  it('keeps the packages whose name contains the text, ignoring case', () => {
    expect(names('NUM')).toEqual(['numpy', 'NumExpr']);
  });

  it('ignores blanks around the text', () => {
    expect(names('  sci ')).toEqual(['scipy']);
  });

  it('keeps all packages for an empty filter', () => {
    expect(names('')).toEqual(['numpy', 'NumExpr', 'scipy']);
  });

  it('keeps none when nothing matches', () => {
    expect(names('torch')).toEqual([]);
  });
});

describe('terminalPath', () => {
  it('creates an overlay terminal under its encoded name', () => {
    expect(terminalPath({ overlay: 'python/3.11' })).toBe(
      'overlays/python%2F3.11/terminal'
    );
  });

  it('creates a kernel terminal under the kernel id', () => {
    expect(terminalPath({ kernelId: 'abc-123' })).toBe(
      'kernels/abc-123/terminal'
    );
  });
});

describe('offersTerminal', () => {
  it('offers a terminal on overlays and envs, not on base images', () => {
    const kinds = (['sif', 'sqf', 'img'] as const).filter(kind =>
      offersTerminal(makeOverlay({ kind }))
    );
    expect(kinds).toEqual(['sqf', 'img']);
  });
});
