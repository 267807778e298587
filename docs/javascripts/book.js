// The Attention Book: small page behaviours that Material does not provide.
// - the search dialog gets an accessible name;
// - a display equation wider than the column becomes a focusable, labelled scroll box
//   (so that keyboard users can scroll it), and an inline formula wider than the line
//   gets a scroll box of its own (so that no page scrolls sideways on a phone).
(function () {
  "use strict";

  function nameSearchDialog() {
    const dialog = document.querySelector(".md-search[role='dialog']");
    if (dialog && !dialog.hasAttribute("aria-label")) dialog.setAttribute("aria-label", "Search the book");
  }

  function markWideMath() {
    const article = document.querySelector("article.md-content__inner") || document.body;
    const boxes = [[".md-typeset div.arithmatex", "Equation"], [".md-typeset__scrollwrap", "Table"]];
    boxes.forEach(([selector, what]) => document.querySelectorAll(selector).forEach((box) => {
      const scrolls = box.scrollWidth > box.clientWidth + 1;
      box.classList.toggle("ab-scrolls", scrolls);
      if (scrolls) {
        box.setAttribute("tabindex", "0");
        box.setAttribute("role", "region");
        box.setAttribute("aria-label", `${what} (scrolls sideways)`);
      } else if (box.getAttribute("role") === "region") {
        box.removeAttribute("tabindex");
        box.removeAttribute("role");
        box.removeAttribute("aria-label");
      }
    }));
    // inline formulas cannot wrap: one that runs past the column's edge gets a box of its
    // own (it moves to the next line and scrolls if it is still too wide); in document order,
    // since each change moves the formulas after it
    const edge = article.getBoundingClientRect().right;
    document.querySelectorAll(".md-typeset span.arithmatex > mjx-container").forEach((math) => {
      math.classList.remove("ab-wide-inline");
      math.removeAttribute("tabindex");
    });
    document.querySelectorAll(".md-typeset span.arithmatex > mjx-container").forEach((math) => {
      if (math.closest("table, .md-typeset__scrollwrap, pre")) return;  // those scroll as a whole
      if (math.getBoundingClientRect().right > edge + 1) {
        math.classList.add("ab-wide-inline");
        if (math.scrollWidth > math.clientWidth + 1) math.setAttribute("tabindex", "0");
      }
    });
  }

  function afterTypeset() {
    nameSearchDialog();
    const ready = window.MathJax && MathJax.startup && MathJax.startup.promise;
    (ready || Promise.resolve()).then(() => requestAnimationFrame(markWideMath));
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(markWideMath, 150);
  });
  if (typeof document$ !== "undefined") {
    document$.subscribe(afterTypeset);  // every page, including instant navigation
  } else {
    document.addEventListener("DOMContentLoaded", afterTypeset);
  }
  window.attnbookMarkWideMath = markWideMath;  // mathjax-config.js calls it after a re-typeset
})();
