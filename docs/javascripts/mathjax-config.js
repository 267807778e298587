// MathJax 3, served by the site itself (copied from the pinned npm package at build time).
// arithmatex wraps page math in .arithmatex; notebook pages keep $...$ in .jp-RenderedMarkdown.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
    tags: "ams",
  },
  options: {
    ignoreHtmlClass: ".+",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown|jp-MarkdownOutput",
  },
  startup: {
    ready() {
      MathJax.startup.defaultReady();
      // Material's instant navigation swaps the page without reloading: typeset again.
      if (typeof document$ !== "undefined") {
        document$.subscribe(() => {
          MathJax.startup.output.clearCache();
          MathJax.typesetClear();
          MathJax.texReset();
          MathJax.typesetPromise().then(() => window.attnbookMarkWideMath && window.attnbookMarkWideMath());
        });
      }
    },
  },
};
