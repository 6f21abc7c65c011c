// bob-workbook report: collapsed tables print in full (opened before printing, closed again after).
window.addEventListener("beforeprint", function () {
  document.querySelectorAll("details").forEach(function (d) {
    if (!d.open) { d.setAttribute("data-bob-reopen", ""); d.open = true; }
  });
});
window.addEventListener("afterprint", function () {
  document.querySelectorAll("details[data-bob-reopen]").forEach(function (d) {
    d.open = false; d.removeAttribute("data-bob-reopen");
  });
});
