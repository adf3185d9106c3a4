"""A dark reading-room theme: dark greys around the film so the eye adapts to the image, not the chrome."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette

STYLE = """
QMainWindow, QWidget#central { background: #121417; }
QWidget { color: #d6dbe0; }
QDockWidget { color: #aeb6bf; font-weight: 600; }
QDockWidget::title { background: #1b1f24; padding: 5px 8px; border-bottom: 1px solid #262b31; }
QGroupBox { border: 1px solid #2a2f36; border-radius: 6px; margin-top: 14px; padding: 8px 6px 6px 6px; background: #171a1e; }
QGroupBox::title { subcontrol-origin: margin; left: 10px; padding: 0 4px; color: #8fa3b8; font-weight: 600; }
QLabel#filmName { font-size: 14pt; font-weight: 600; color: #f0f3f6; }
QLabel#filmHeader { color: #9fb0c0; }
QLabel#sectionTitle { font-weight: 600; color: #c8d2dc; }
QLabel#hint { color: #8a96a3; }
QLabel#notice { color: #ffc45a; }
QLabel#emptyTitle { font-size: 20pt; font-weight: 300; color: #c8d0d8; }
QLabel#disclaimer { background: #2a2110; color: #f2c572; padding: 5px 10px; border-top: 1px solid #4a3a18; }
QFrame#banner { background: #3a1c1c; border-bottom: 1px solid #6a2c2c; }
QFrame#banner[kind="info"] { background: #1c2a3a; border-bottom: 1px solid #2c4a6a; }
QFrame#banner QLabel { color: #ffd9d0; }
QListWidget, QTreeWidget, QTableView, QTextBrowser, QLineEdit, QComboBox, QScrollArea { background: #15181c; border: 1px solid #2a2f36; border-radius: 4px; }
QListWidget, QTreeWidget { alternate-background-color: #181c21; }
QListWidget::item, QTreeWidget::item { padding: 4px 4px; }
QListWidget::item:selected, QTreeWidget::item:selected, QTableView::item:selected { background: #1f4f86; color: white; }
QHeaderView::section { background: #1d2126; color: #a9b4bf; border: none; border-right: 1px solid #2a2f36; padding: 3px 6px; }
QPushButton { background: #222831; border: 1px solid #34404d; border-radius: 5px; padding: 5px 12px; }
QPushButton:hover { background: #2a3340; }
QPushButton:disabled { color: #5c6570; }
QStatusBar { background: #0f1114; color: #b7c0c9; border-top: 1px solid #23272c; }
QStatusBar QLabel#statusField { padding: 0 8px; border-left: 1px solid #2a2f36; }
QMenuBar { background: #16191d; }
QMenuBar::item:selected, QMenu::item:selected { background: #1f4f86; }
QMenu { background: #1a1d22; border: 1px solid #2a2f36; }
QProgressBar { background: #1b1f24; border: 1px solid #2a2f36; border-radius: 3px; }
QProgressBar::chunk { background: #409cff; }
QSlider::groove:horizontal { height: 4px; background: #2a2f36; border-radius: 2px; }
QSlider::handle:horizontal { background: #409cff; width: 12px; margin: -5px 0; border-radius: 6px; }
QToolTip { background: #1d2126; color: #e6eaee; border: 1px solid #34404d; }
"""


def apply_theme(app) -> None:
    app.setStyle("Fusion")
    pal = QPalette()
    for role, col in (
        (QPalette.Window, "#121417"), (QPalette.WindowText, "#d6dbe0"), (QPalette.Base, "#15181c"),
        (QPalette.AlternateBase, "#181c21"), (QPalette.Text, "#d6dbe0"), (QPalette.Button, "#222831"),
        (QPalette.ButtonText, "#d6dbe0"), (QPalette.Highlight, "#1f4f86"), (QPalette.HighlightedText, "#ffffff"),
        (QPalette.ToolTipBase, "#1d2126"), (QPalette.ToolTipText, "#e6eaee"), (QPalette.PlaceholderText, "#6d7883"),
    ):
        pal.setColor(role, QColor(col))
    pal.setColor(QPalette.Disabled, QPalette.Text, QColor("#5c6570"))
    pal.setColor(QPalette.Disabled, QPalette.ButtonText, QColor("#5c6570"))
    app.setPalette(pal)
    app.setStyleSheet(STYLE)
