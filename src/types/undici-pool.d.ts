// undici's Pool module on its own (see src/pipeline/upstream.ts); the class is the
// one undici's index exports.
declare module 'undici/lib/dispatcher/pool.js' {
  import type { Pool } from 'undici';
  const PoolClass: typeof Pool;
  export default PoolClass;
}
