// The host's invitation links on the stage page: who each link is for, whether a client
// holds it, and Revoke / Reissue. The host and co-hosts see the list; only the host may
// revoke or reissue (the server says so to a co-host who tries).
import { $, h, api, showError, spaceIdFromPath, tokenFromFragment } from "/static/common.js";

const spaceId = spaceIdFromPath();
const token = tokenFromFragment();
const base = `/api/spaces/${encodeURIComponent(spaceId)}/links`;

function stateOf(link) {
  if (link.revoked) return "revoked";
  return link.claimed ? "in use" : "not opened yet";
}

function row(link) {
  const act = (action) => () => change(link, action);
  return h(
    "li",
    { class: "row", dataset: { pid: link.participant_id, state: stateOf(link) } },
    h("span", {}, `${link.name} · ${link.role} · ${stateOf(link)}`),
    h("span", { class: "spacer" }),
    link.revoked ? null : h("button", { type: "button", class: "small", onclick: act("revoke") }, "Revoke"),
    h("button", { type: "button", class: "small", onclick: act("reissue") }, "Reissue"),
  );
}

export async function loadLinks() {
  const card = $("#links-card");
  if (!card || !token) return;
  let out;
  try {
    out = await api(base, { token });
  } catch {
    card.hidden = true; // a speaker's page: links are for the people who run the room
    return;
  }
  card.hidden = false;
  const items = out.links.map(row);
  $("#links").replaceChildren(...(items.length ? items : [h("li", { class: "status" }, "No links yet.")]));
}

async function change(link, action) {
  if (action === "revoke" && !window.confirm(`Revoke ${link.name}'s link? Whoever holds it leaves the Space.`)) return;
  try {
    const out = await api(`${base}/${encodeURIComponent(link.participant_id)}/${action}`, { method: "POST", token });
    if (action === "reissue") {
      $("#links-new").textContent = out.link;
      $("#links-out").hidden = false;
    }
  } catch (e) {
    showError(e, "Links");
  }
  await loadLinks();
}

$("#links-refresh")?.addEventListener("click", () => loadLinks());
$("#links-copy")?.addEventListener("click", () => navigator.clipboard?.writeText($("#links-new").textContent));
document.addEventListener("visibilitychange", () => document.visibilityState === "visible" && loadLinks());
loadLinks();
