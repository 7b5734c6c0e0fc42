// What the panels share: the daemon's last word on the models, the download and the loaded
// model. Written by the panel that owns each part, read by the others.

export const state = {
  models: {}, // variant -> available_models entry
  progress: { status: "idle" },
  loaded: null,
};
