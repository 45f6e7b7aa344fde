// The front page: live, upcoming and past Spaces, a field to open a link, and the
// form that creates a Space (with its links to copy).
import { $, h, api, showError, clearErrors, copyableLink, formatWhen, formatDuration } from "/static/common.js";

const LIST_REFRESH_MS = 60000;
const LISTS = [
  ["live", "#live-list", "Nobody is live right now."],
  ["scheduled", "#upcoming-list", "No upcoming Spaces."],
  ["ended", "#past-list", "No past Spaces yet."],
];

function item(space) {
  let when = "";
  if (space.state === "live") when = `Live since ${formatWhen(space.started_at)}`;
  else if (space.state === "scheduled") when = space.scheduled_at ? `Starts ${formatWhen(space.scheduled_at)}` : "Starts when the host is ready";
  else if (space.started_at && space.ended_at)
    when = `${formatWhen(space.started_at)} · ${formatDuration(space.ended_at - space.started_at)} long`;
  const href = space.state === "ended" ? space.replay_link : space.listen_link;
  return h(
    "li",
    { class: "space-item", dataset: { id: space.id, state: space.state } },
    space.state === "live" ? h("span", { class: "badge live" }, "● Live") : null,
    h("a", { href, class: "space-title" }, space.title),
    h("span", { class: "meta" }, `Hosted by ${space.host_name}`, when ? ` · ${when}` : ""),
  );
}

async function loadLists() {
  await Promise.all(
    LISTS.map(async ([state, sel, empty]) => {
      const list = $(sel);
      try {
        const out = await api(`/api/spaces?state=${state}`);
        list.replaceChildren(...(out.spaces.length ? out.spaces.map(item) : [h("li", { class: "empty" }, empty)]));
      } catch (e) {
        list.replaceChildren(h("li", { class: "empty" }, "Could not load this list."));
        showError(e, "Loading Spaces");
      }
      list.removeAttribute("aria-busy");
    }),
  );
}

/** A pasted link (any host: the link may name this server by another name) or an id. */
export function spaceTarget(text) {
  const value = text.trim();
  if (!value) return null;
  try {
    const url = new URL(value, location.origin);
    const match = url.pathname.match(/^\/s\/([A-Za-z0-9_-]+)(\/(host|speak|replay))?\/?$/);
    if (match && (value.includes("/") || value.includes(":"))) return `/s/${match[1]}${match[2] || ""}${url.hash}`;
  } catch {
    /* not a URL: maybe an id */
  }
  return /^[A-Za-z0-9_-]{4,64}$/.test(value) ? `/s/${value}` : null;
}

$("#open").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const target = spaceTarget($("#open-link").value);
  if (!target) {
    $("#open-status").textContent = "That is neither a Space link nor a Space id.";
    $("#open-link").setAttribute("aria-invalid", "true");
    $("#open-link").focus();
    return;
  }
  location.assign(target);
});

$("#key").value = sessionStorage.getItem("townhall:admin") || "";
$("#host-name").value = localStorage.getItem("townhall:host-name") || "";
$("#create").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  clearErrors();
  const when = $("#when").value;
  try {
    const hostName = $("#host-name").value.trim();
    const out = await api("/api/spaces", {
      method: "POST",
      token: $("#key").value.trim(),
      body: {
        title: $("#title").value.trim(),
        description: $("#description").value.trim(),
        scheduled_at: when ? new Date(when).getTime() / 1000 : null,
        listed: $("#listed").checked,
        host_name: hostName || "Host",
      },
    });
    sessionStorage.setItem("townhall:admin", $("#key").value.trim());
    if (hostName) localStorage.setItem("townhall:host-name", hostName);
    $("#host-link-box").replaceChildren(copyableLink(out.host_link, "host link", "host-link"));
    $("#speaker-link-box").replaceChildren(copyableLink(out.speaker_link, "speaker link", "speaker-link"));
    $("#listen-link-box").replaceChildren(copyableLink(out.listen_link, "listen link", "listen-link"));
    $("#created").hidden = false;
    $("#created").focus();
    loadLists();
// The lists change when a Space starts or ends: a look now and then (the list is cacheable).
setInterval(loadLists, LIST_REFRESH_MS);
  } catch (e) {
    showError(e, "Create");
  }
});

loadLists();
// The lists change when a Space starts or ends: a look now and then (the list is cacheable).
setInterval(loadLists, LIST_REFRESH_MS);
