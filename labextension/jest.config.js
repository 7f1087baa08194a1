/**
 * Unit tests of the panel's pure modules and job store (test/*.spec.ts),
 * compiled and type-checked by ts-jest with tsconfig.test.json. They import
 * no JupyterLab runtime module, so Node's environment is enough.
 */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }]
  }
};
