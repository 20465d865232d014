// sdgen web: live parts of the pages (short polling, no reload) and keyboard paging of images.
// No framework, no build step: this file is served as it is.
"use strict";

(function () {
  const every = parseInt(document.body.dataset.pollMs || "2000", 10);

  // Elements with data-poll="URL" are replaced by the server's fresh HTML of themselves.
  function poll(el) {
    let busy = false;
    const tick = async () => {
      if (busy || document.hidden) return;
      busy = true;
      try {
        const r = await fetch(el.dataset.poll, { cache: "no-store", credentials: "same-origin" });
        if (r.ok) {
          const html = await r.text();
          // a form being typed in stays as it is until it loses the focus
          if (!el.contains(document.activeElement) || document.activeElement === document.body) {
            el.innerHTML = html;
            el.dataset.updated = String(Date.now());
          }
        }
      } catch (e) {
        /* the server is away for a moment: try again at the next tick */
      } finally {
        busy = false;
      }
    };
    setInterval(tick, every);
  }
  document.querySelectorAll("[data-poll]").forEach(poll);

  // Forms that ask before doing something that cannot be undone (cancel).
  document.addEventListener("submit", (ev) => {
    const form = ev.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) ev.preventDefault();
  });

  // The full-size view: left and right arrows go to the previous and next image.
  document.addEventListener("keydown", (ev) => {
    if (ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const tag = (document.activeElement && document.activeElement.tagName) || "";
    if (["INPUT", "TEXTAREA", "SELECT"].includes(tag)) return;
    const link = document.querySelector(ev.key === "ArrowLeft" ? "a[rel=prev]#prev" : ev.key === "ArrowRight" ? "a[rel=next]#next" : null);
    if (link) {
      ev.preventDefault();
      window.location.href = link.href;
    }
  });

  // Filters apply when chosen.
  document.querySelectorAll("form.filters select").forEach((s) =>
    s.addEventListener("change", () => s.form.submit())
  );
})();
