// What the panels share: the daemon's last word on the models, the download and the loaded
// model. Written by the panel that owns each part, read by the others.

export const state = {
  models: {}, // variant -> available_models entry
  progress: { status: "idle" },
  loaded: null,
  queued: [], // variants waiting behind the running download, in order
  loadFailed: null, // {variant, error}: the last load that failed, until one succeeds
  lastOutcome: {}, // variant -> the outcome of its newest download (the history)
  disk: null, // {folder, models_bytes, free_bytes}
};
