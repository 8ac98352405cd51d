// Results kept in this browser (localStorage) across reloads. An entry is one request: what was
// sent (fields, file names), the seed of its first image, and the final images as base64. When
// the browser's quota is reached the oldest entries go first.

const KEY = "canvasd.history.v1";
const MAX_ENTRIES = 40;

export function loadHistory() {
  try {
    const list = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch (_) {
    return [];
  }
}

/** Saves `list` (newest first), dropping the oldest entries until it fits. Returns what was kept. */
export function saveHistory(list) {
  let kept = list.slice(0, MAX_ENTRIES);
  while (true) {
    try {
      localStorage.setItem(KEY, JSON.stringify(kept));
      return kept;
    } catch (e) {
      if (kept.length <= 1) {
        localStorage.removeItem(KEY);
        return [];
      }
      kept = kept.slice(0, -1);
    }
  }
}

export function clearHistory() {
  localStorage.removeItem(KEY);
}

const SETTINGS_KEY = "canvasd.settings.v1";

/** Small page settings (API key, last model) — in this browser only, never sent elsewhere. */
export function loadSettings() {
  try {
    return JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}") || {};
  } catch (_) {
    return {};
  }
}

export function saveSettings(settings) {
  localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
}
