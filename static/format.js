// Numbers in words for people: decimal units, as disk vendors and the catalog sizes use.

export function formatBytes(bytes) {
  if (bytes == null) return "–";
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  if (bytes >= 1e3) return `${(bytes / 1e3).toFixed(0)} kB`;
  return `${bytes} bytes`;
}

export function formatSpeed(bytesPerSecond) {
  if (bytesPerSecond == null) return "–";
  return `${(bytesPerSecond / 1e6).toFixed(1)} MB/s`;
}

export function formatEta(seconds) {
  if (seconds == null) return "–";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

export function formatPercent(value) {
  return `${Number(value || 0).toFixed(1)} %`;
}

export function sentence(text) {
  const trimmed = String(text).trim();
  return /[.!?]$/.test(trimmed) ? trimmed : `${trimmed}.`;
}

// The daemon's errors put what people read first and the technical detail after " Detail: ".
export function splitDetail(text) {
  const at = String(text).indexOf(" Detail: ");
  if (at < 0) return [String(text), ""];
  return [String(text).slice(0, at), String(text).slice(at + " Detail: ".length)];
}
