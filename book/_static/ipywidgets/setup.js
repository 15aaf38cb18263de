// Loaded (by myst-nb, see nb_ipywidgets_js in _config.yml) before require.js and embed-amd.js.
(function () {
  // embed-amd.js places its Font Awesome files (they sit next to it) relative to the URL that
  // require.js gives its module "@jupyter-widgets/html-manager/dist/libembed-amd"; by default that is
  // <page dir>/@jupyter-widgets/html-manager/dist/ (404). A global `require` object defined before
  // require.js loads is its configuration: map that module path onto this folder.
  // (window.__jupyter_widgets_assets_path__ does not help: html-manager 1.0.x reads it only after
  // its CSS, with the font URLs, has been built.)
  window.require = {
    paths: {
      "@jupyter-widgets/html-manager/dist": new URL("html-manager", document.currentScript.src).href,
    },
  };

  // @jupyter-widgets/base typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue); the
  // book loads MathJax 3, so each slider label would throw "reading 'Queue'". Map it onto MathJax 3.
  // MathJax 3 is a deferred script: its global exists by DOMContentLoaded, which fires before the
  // widgets are rendered (this listener is registered before embed-amd.js's).
  document.addEventListener("DOMContentLoaded", function () {
    var mj = window.MathJax;
    if (!mj || mj.Hub || !mj.startup || !mj.typesetPromise) return;
    mj.Hub = {
      Queue: function (cmd) {
        var el = Array.isArray(cmd) ? cmd[2] : undefined;
        mj.startup.promise = mj.startup.promise.then(function () {
          return mj.typesetPromise(el ? [el] : undefined);
        });
        return mj.startup.promise;
      },
    };
  });
})();
