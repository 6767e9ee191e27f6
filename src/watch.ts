// Reload when the config or any file it names changes. Watches the folders (not
// the files): Kubernetes updates a mounted ConfigMap or Secret by swapping a
// `..data` symlink, which replaces every file at once and never "modifies" one.
// Events are debounced and a reload happens only when some file's content
// actually changed (each reload rotates TLS session-ticket keys).
import { watch, readFileSync, realpathSync, type FSWatcher } from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname } from 'node:path';

export function fingerprint(files: readonly string[]): string {
  const h = createHash('sha256');
  for (const f of files) {
    h.update(f);
    try { h.update(readFileSync(f)); } catch (e) { h.update(`missing:${(e as NodeJS.ErrnoException).code}`); }
  }
  return h.digest('hex');
}

export class ConfigWatcher {
  #watchers: FSWatcher[] = [];
  #timer?: NodeJS.Timeout;
  #files: readonly string[] = [];
  #print = '';
  readonly #debounceMs: number;
  readonly #onChange: () => void;

  constructor(onChange: () => void, debounceMs = 250) {
    this.#onChange = onChange;
    this.#debounceMs = debounceMs;
  }

  /** (Re)watch the folders of `files`; called after every successful load. */
  track(files: readonly string[]): void {
    this.#files = files;
    this.#print = fingerprint(files);
    for (const w of this.#watchers) w.close();
    this.#watchers = [];
    // The folder of each path as named, and of its target when it is a symlink
    // (a file edited in place behind a link changes only in the target's folder).
    const dirs = new Set<string>();
    for (const f of files) {
      dirs.add(dirname(f));
      try { dirs.add(dirname(realpathSync(f))); } catch { /* missing: the named folder is enough */ }
    }
    for (const dir of dirs) {
      try {
        const w = watch(dir, { persistent: false }, () => this.#poke());
        w.on('error', () => {});
        this.#watchers.push(w);
      } catch {
        // A folder that cannot be watched: SIGHUP still reloads.
      }
    }
  }

  #poke(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      const now = fingerprint(this.#files);
      if (now === this.#print) return;
      this.#print = now;
      this.#onChange();
    }, this.#debounceMs);
    this.#timer.unref();
  }

  close(): void {
    clearTimeout(this.#timer);
    for (const w of this.#watchers) w.close();
    this.#watchers = [];
  }
}
