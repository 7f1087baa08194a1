import { formatBytes, formatTime, parseList, percent } from '../src/format';

describe('formatBytes', () => {
  it.each([
    [0, '0 B'],
    [1023, '1023 B'],
    [1536, '1.5 KiB'],
    [256 * 1024 ** 2, '256 MiB'],
    [1.25 * 1024 ** 3, '1.3 GiB'],
    [3 * 1024 ** 5, '3072 TiB']
  ])('%d bytes are %s', (bytes, text) => {
    expect(formatBytes(bytes)).toBe(text);
  });

  it('gives nothing for sizes that are not one', () => {
    expect(formatBytes(-1)).toBe('');
    expect(formatBytes(Number.NaN)).toBe('');
  });
});

describe('parseList', () => {
  it('splits on commas and white space', () => {
    expect(parseList(' numpy, scipy>=1.11\n pandas ,,')).toEqual([
      'numpy',
      'scipy>=1.11',
      'pandas'
    ]);
  });

  it('gives nothing for blank text', () => {
    expect(parseList(' , ')).toEqual([]);
  });
});

describe('percent', () => {
  it.each([
    [0, 0],
    [0.424, 42],
    [1, 100],
    [1.02, 100],
    [-0.1, 0],
    [Number.NaN, 0]
  ])('progress %d is %d %', (progress, expected) => {
    expect(percent(progress)).toBe(expected);
  });
});

describe('formatTime', () => {
  it('gives only the time of day for today', () => {
    const now = new Date();
    expect(formatTime(now.getTime() / 1000)).toBe(now.toLocaleTimeString());
  });

  it('gives the date too for another day', () => {
    const then = new Date(2020, 0, 2, 3, 4, 5);
    expect(formatTime(then.getTime() / 1000)).toBe(then.toLocaleString());
  });
});
