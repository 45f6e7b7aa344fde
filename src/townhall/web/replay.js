// The replay page: the recording with its length, seeking (the audience port answers
// HTTP Range) and a skip of 15 s either way.
import {
  $, api, ApiError, showError, spaceIdFromPath, formatDuration, formatWhen, linkProblem, showProblem, h, listenLink,
} from "/static/common.js";

const spaceId = spaceIdFromPath();
const audio = $("#replay");
const SKIP_S = 15;

function position() {
  $("#position").textContent = `${formatDuration(audio.currentTime)} / ${formatDuration(audio.duration)}`;
  $("#toggle").textContent = audio.paused ? "▶ Play" : "❚❚ Pause";
  document.body.dataset.duration = Number.isFinite(audio.duration) ? audio.duration.toFixed(1) : "";
}

function seekBy(s) {
  const end = Number.isFinite(audio.duration) ? audio.duration : Infinity;
  audio.currentTime = Math.max(0, Math.min(end, audio.currentTime + s));
}

async function load() {
  let info;
  try {
    info = await api(`/api/spaces/${encodeURIComponent(spaceId)}`);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return showProblem(linkProblem(e));
    return showError(e, "Loading the Space");
  }
  document.title = `Replay: ${info.title} · townhall`;
  $("#title").textContent = info.title;
  $("#host").textContent = `Hosted by ${info.host_name}`;
  $("#description").textContent = info.description || "";
  if (info.cancelled) {
    return showProblem(
      { title: "This Space was cancelled", message: "It never went live, so there is no recording." },
      h("p", {}, h("a", { href: listenLink(spaceId) }, "The Space's page")),
    );
  }
  if (!info.replay) {
    return showProblem(
      { title: "No replay yet", message: "The replay is published when the Space ends." },
      h("p", {}, h("a", { href: listenLink(spaceId) }, info.state === "live" ? "Listen live now" : "The Space's page")),
    );
  }
  if (info.started_at && info.ended_at)
    $("#when").textContent = `${formatWhen(info.started_at)} · ${formatDuration(info.ended_at - info.started_at)} long`;
  audio.src = info.replay.ogg;
  $("#download").href = info.replay.ogg;
  for (const ev of ["loadedmetadata", "durationchange", "timeupdate", "play", "pause", "seeked"]) audio.addEventListener(ev, position);
  audio.addEventListener("error", () => {
    $("#replay-note").textContent = "The recording could not be loaded. Try again in a moment.";
  });
  position();
}

$("#toggle").addEventListener("click", () => (audio.paused ? audio.play().catch((e) => showError(e, "Play")) : audio.pause()));
$("#back").addEventListener("click", () => seekBy(-SKIP_S));
$("#fwd").addEventListener("click", () => seekBy(SKIP_S));
window.townhall = { audio };
load();
