// Darkroom review gallery: decisions through the JSON API, keyboard shortcuts, full-size view,
// pages (a decision from the keyboard moves on; past a page's last card, to the next page).
// No inline script (the page's CSP forbids it) and no innerHTML with catalog text: every
// string from the server goes in through textContent.
(function () {
  "use strict";
  const root = document.getElementById("gallery");
  if (!root) return;
  const base = root.dataset.base, dag = root.dataset.dag, run = root.dataset.run;
  const csrfHeader = root.dataset.csrfHeader;
  const cards = Array.from(document.querySelectorAll("article.card"));
  const flash = document.getElementById("flash");
  const noteBox = document.getElementById("note");
  const dialog = document.getElementById("full");
  let current = 0;
  const inflight = new Set();  // decisions sent, not yet answered: a page change waits for them

  const PAST = {approve: "approved", reject: "rejected"};

  function say(text, bad) {
    flash.textContent = text;
    flash.classList.toggle("bad", !!bad);
  }

  async function post(url, body) {
    const resp = await fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", [csrfHeader]: "1"},
      body: JSON.stringify(body),
    });
    let data = {};
    try { data = await resp.json(); } catch (e) { /* empty body */ }
    return {ok: resp.ok, status: resp.status, data: data};
  }

  function mark(card, decision, reviewer) {
    const status = decision === "approve" || decision === "approved" ? "approved" : "rejected";
    card.className = card.className.replace(/\bst-\S+/g, "") + " st-" + status;
    card.dataset.status = status;
    const badge = card.querySelector(".badge");
    badge.className = "badge st-" + status;
    badge.textContent = status + (reviewer ? " by " + reviewer : "");
    card.querySelector(".pick").checked = false;
  }

  function noteFor(card) {
    const own = card.querySelector(".cardnote");
    return (own && own.value) || (noteBox && noteBox.value) || "";
  }

  async function decide(card, decision) {
    if (card.dataset.decidable !== "1") { say("This asset takes no decision.", true); return; }
    const id = card.dataset.asset;
    const r = await post(`${base}/api/assets/${encodeURIComponent(id)}/${decision}`, {note: noteFor(card)});
    if (r.ok) {
      mark(card, decision, r.data.reviewer);
      say(`${PAST[decision]} ${id}`);
    } else {
      say(`${r.status}: ${r.data.detail || "refused"}`, true);
    }
  }

  // a / r from the keyboard: decide, and move on at once (the answer comes back while the
  // reviewer looks at the next card); after the page's last card, the next page.
  function decideAndNext(card, decision) {
    if (card.dataset.decidable !== "1") { say("This asset takes no decision.", true); return; }
    const p = decide(card, decision).finally(() => inflight.delete(p));
    inflight.add(p);
    if (current < cards.length - 1) focus(current + 1);
    else goPage(root.dataset.next, "This is the last page.");
  }

  async function goPage(url, none) {
    await Promise.all(Array.from(inflight));  // leave no decision unanswered
    if (url) { location.href = url; return; }
    const said = flash.textContent;
    if (!said.endsWith(none)) say((said ? said + " · " : "") + none, flash.classList.contains("bad"));
  }

  function selected() { return cards.filter((c) => c.querySelector(".pick").checked); }
  function updateCount() {
    const count = document.getElementById("selected-count");
    if (count) count.textContent = selected().length + " selected";
  }

  async function bulk(decision) {
    if (!noteBox) { say("Decisions are closed for this run.", true); return; }
    const picked = selected();
    if (!picked.length) { say("Select assets first (x, or the checkboxes).", true); return; }
    const url = `${base}/api/runs/${encodeURIComponent(dag)}/${encodeURIComponent(run)}/${decision}`;
    const r = await post(url, {asset_ids: picked.map((c) => c.dataset.asset), note: noteBox.value});
    const done = new Map((r.data.decided || []).map((d) => [d.asset_id, d]));
    picked.forEach((c) => { const d = done.get(c.dataset.asset); if (d) mark(c, decision, d.reviewer); });
    const refused = r.data.refused || [];
    say(`${PAST[decision]} ${done.size}` + (refused.length ? `, refused ${refused.length}: ${refused[0].reason}` : ""),
        refused.length > 0 || (!r.ok && !done.size));
    updateCount();
  }

  function focus(i) {
    if (!cards.length) return;
    current = Math.max(0, Math.min(cards.length - 1, i));
    cards[current].focus();
  }

  function openFull(card) {
    const img = document.getElementById("full-img");
    img.src = `${base}/files/asset/${encodeURIComponent(card.dataset.asset)}/original`;
    document.getElementById("full-caption").textContent =
      card.querySelector(".product").textContent + " · " + card.dataset.asset;
    dialog.showModal();
  }

  cards.forEach((card, i) => {
    card.addEventListener("focus", () => { current = i; });
    card.querySelector(".thumb").addEventListener("click", () => openFull(card));
    card.querySelector(".pick").addEventListener("change", updateCount);
    card.querySelectorAll("button[data-decision]").forEach((b) =>
      b.addEventListener("click", () => decide(card, b.dataset.decision)));
  });
  // Absent when the run's decisions are closed (it published, or was re-processed).
  document.getElementById("bulk-approve")?.addEventListener("click", () => bulk("approve"));
  document.getElementById("bulk-reject")?.addEventListener("click", () => bulk("reject"));
  document.getElementById("select-waiting")?.addEventListener("click", () => {
    cards.forEach((c) => {
      c.querySelector(".pick").checked = ["qa_passed", "needs_review"].includes(c.dataset.status);
    });
    updateCount();
  });
  const help = document.getElementById("help");
  document.getElementById("help-toggle").addEventListener("click", () => { help.hidden = !help.hidden; });

  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input[type=text], select, textarea")) {
      if (e.key === "Escape") e.target.blur();
      return;
    }
    if (dialog.open) return;  // the dialog closes itself on Escape
    const card = cards[current];
    switch (e.key) {
      case "j": case "ArrowRight": case "ArrowDown":
        if (current < cards.length - 1) focus(current + 1);
        else goPage(root.dataset.next, "This is the last page.");
        break;
      case "k": case "ArrowLeft": case "ArrowUp": focus(current - 1); break;
      case "a": if (card) decideAndNext(card, "approve"); break;
      case "r": if (card) decideAndNext(card, "reject"); break;
      case "]": goPage(root.dataset.next, "This is the last page."); break;
      case "[": goPage(root.dataset.prev, "This is the first page."); break;
      case "A": bulk("approve"); break;
      case "R": bulk("reject"); break;
      case "x": if (card) { const p = card.querySelector(".pick"); p.checked = !p.checked; updateCount(); } break;
      case "f": case "Enter": if (card) openFull(card); break;
      case "i": if (card) { const d = card.querySelector("details"); d.open = !d.open; } break;
      case "n": if (card) { const n = card.querySelector(".cardnote") || noteBox; if (n) n.focus(); } break;
      case "?": help.hidden = !help.hidden; break;
      default: return;
    }
    e.preventDefault();
  });
  // The last page asks now and then whether batches still running have added assets.
  async function pollNewer() {
    try {
      const resp = await fetch(root.dataset.newer, {credentials: "same-origin"});
      const data = resp.ok ? await resp.json() : {assets: []};
      if (data.assets.length) {
        document.querySelectorAll(".pager .newer").forEach((el) => {
          const link = document.createElement("a");
          link.href = root.dataset.newerPage;
          link.textContent = "new images arrived ›";
          el.replaceChildren(link);
          el.hidden = false;
        });
        root.dataset.next = root.dataset.newerPage;  // ] and the last card's a / r go there now
        return;
      }
    } catch (e) { /* the server restarting: ask again later */ }
    setTimeout(pollNewer, 10000);
  }
  if (root.dataset.newer) setTimeout(pollNewer, 10000);

  focus(0);
})();
