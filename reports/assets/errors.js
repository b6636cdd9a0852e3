window.mmloErrors = [];
window.mmloError = function (message) {
  window.mmloErrors.push(String(message));
  document.documentElement.setAttribute("data-js-errors", String(window.mmloErrors.length));
  var box = document.getElementById("mmlo-js-errors");
  if (box) { box.hidden = false; box.textContent = window.mmloErrors.join("\n"); }
};
window.addEventListener("error", function (e) { window.mmloError(e.message || e); });
window.addEventListener("unhandledrejection", function (e) { window.mmloError(e.reason || e); });
