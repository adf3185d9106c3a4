; Inno Setup script: a per-user installer for the one-folder build (dist\CXRViewer\).
;
;   packaging\build.sh  (in Git Bash), or:  py -m PyInstaller --noconfirm packaging\cxrviewer.spec
;   "C:\Program Files (x86)\Inno Setup 6\ISCC.exe" packaging\windows\cxrviewer.iss
;   -> dist\CXRViewer-0.1.0-setup.exe
;
; Per-user (no administrator rights, as reading-room PCs are often locked down): everything goes under
; %LOCALAPPDATA%\Programs and HKCU. File associations:
;   - .dcm / .dicom: CXR Viewer becomes the handler (ProgID CXRViewer.DICOM), with our icon;
;   - .png / .jpg / .jpeg / .tif / .tiff: CXR Viewer is added to "Open with" (OpenWithProgids) without
;     taking over the default photo viewer; the user can choose it as default in Windows' settings
;     (Windows 10/11 do not let installers silently change the default for common image types).
;   - DICOMDIR (no extension): "Open with CXR Viewer" on every file and folder would be too intrusive, so
;     it is opened from the app (File > Open, or dropped on the window / the desktop shortcut).
; A second double-click hands the file to the running window (single instance over a named pipe).

#define AppName "CXR Viewer"
#define AppVersion "0.1.0"
#define AppExe "CXRViewer.exe"
#define ProgIdDicom "CXRViewer.DICOM"
#define ProgIdImage "CXRViewer.Image"

[Setup]
AppId={{7C1B3A52-4E0B-4C55-9A7D-3F6C2B8E0A11}
AppName={#AppName}
AppVersion={#AppVersion}
AppPublisher=CXR Viewer developers
AppComments=Decision support only, not a diagnosis.
DefaultDirName={localappdata}\Programs\CXR Viewer
DefaultGroupName={#AppName}
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ChangesAssociations=yes
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\..\dist
OutputBaseFilename=CXRViewer-{#AppVersion}-setup
SetupIconFile=cxrviewer.ico
UninstallDisplayIcon={app}\{#AppExe}
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern

[Files]
Source: "..\..\dist\CXRViewer\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs
Source: "cxrviewer.ico"; DestDir: "{app}"; Flags: ignoreversion

[Icons]
Name: "{group}\{#AppName}"; Filename: "{app}\{#AppExe}"; IconFilename: "{app}\cxrviewer.ico"
Name: "{userdesktop}\{#AppName}"; Filename: "{app}\{#AppExe}"; IconFilename: "{app}\cxrviewer.ico"; Tasks: desktopicon

[Tasks]
Name: "desktopicon"; Description: "Create a desktop shortcut (drop films or folders on it)"; Flags: unchecked

[Registry]
; --- the program, for "Open with" and Default Apps
Root: HKCU; Subkey: "Software\Classes\Applications\{#AppExe}"; ValueType: string; ValueName: "FriendlyAppName"; ValueData: "{#AppName}"; Flags: uninsdeletekey
Root: HKCU; Subkey: "Software\Classes\Applications\{#AppExe}\shell\open\command"; ValueType: string; ValueName: ""; ValueData: """{app}\{#AppExe}"" ""%1"""
Root: HKCU; Subkey: "Software\Classes\Applications\{#AppExe}\SupportedTypes"; ValueType: string; ValueName: ".dcm"; ValueData: ""
Root: HKCU; Subkey: "Software\Classes\Applications\{#AppExe}\SupportedTypes"; ValueType: string; ValueName: ".dicom"; ValueData: ""
Root: HKCU; Subkey: "Software\Classes\Applications\{#AppExe}\SupportedTypes"; ValueType: string; ValueName: ".png"; ValueData: ""
Root: HKCU; Subkey: "Software\Classes\Applications\{#AppExe}\SupportedTypes"; ValueType: string; ValueName: ".jpg"; ValueData: ""
Root: HKCU; Subkey: "Software\Classes\Applications\{#AppExe}\SupportedTypes"; ValueType: string; ValueName: ".jpeg"; ValueData: ""

; --- DICOM: our ProgID, and the default for .dcm / .dicom
Root: HKCU; Subkey: "Software\Classes\{#ProgIdDicom}"; ValueType: string; ValueName: ""; ValueData: "DICOM image"; Flags: uninsdeletekey
Root: HKCU; Subkey: "Software\Classes\{#ProgIdDicom}\DefaultIcon"; ValueType: string; ValueName: ""; ValueData: "{app}\cxrviewer.ico,0"
Root: HKCU; Subkey: "Software\Classes\{#ProgIdDicom}\shell\open\command"; ValueType: string; ValueName: ""; ValueData: """{app}\{#AppExe}"" ""%1"""
Root: HKCU; Subkey: "Software\Classes\.dcm"; ValueType: string; ValueName: ""; ValueData: "{#ProgIdDicom}"; Flags: uninsdeletevalue
Root: HKCU; Subkey: "Software\Classes\.dcm"; ValueType: string; ValueName: "Content Type"; ValueData: "application/dicom"; Flags: uninsdeletevalue
Root: HKCU; Subkey: "Software\Classes\.dcm\OpenWithProgids"; ValueType: string; ValueName: "{#ProgIdDicom}"; ValueData: ""; Flags: uninsdeletevalue
Root: HKCU; Subkey: "Software\Classes\.dicom"; ValueType: string; ValueName: ""; ValueData: "{#ProgIdDicom}"; Flags: uninsdeletevalue
Root: HKCU; Subkey: "Software\Classes\.dicom\OpenWithProgids"; ValueType: string; ValueName: "{#ProgIdDicom}"; ValueData: ""; Flags: uninsdeletevalue

; --- PNG / JPEG / TIFF: listed under "Open with", the default photo viewer stays
Root: HKCU; Subkey: "Software\Classes\{#ProgIdImage}"; ValueType: string; ValueName: ""; ValueData: "Chest film image"; Flags: uninsdeletekey
Root: HKCU; Subkey: "Software\Classes\{#ProgIdImage}\DefaultIcon"; ValueType: string; ValueName: ""; ValueData: "{app}\cxrviewer.ico,0"
Root: HKCU; Subkey: "Software\Classes\{#ProgIdImage}\shell\open\command"; ValueType: string; ValueName: ""; ValueData: """{app}\{#AppExe}"" ""%1"""
Root: HKCU; Subkey: "Software\Classes\.png\OpenWithProgids"; ValueType: string; ValueName: "{#ProgIdImage}"; ValueData: ""; Flags: uninsdeletevalue
Root: HKCU; Subkey: "Software\Classes\.jpg\OpenWithProgids"; ValueType: string; ValueName: "{#ProgIdImage}"; ValueData: ""; Flags: uninsdeletevalue
Root: HKCU; Subkey: "Software\Classes\.jpeg\OpenWithProgids"; ValueType: string; ValueName: "{#ProgIdImage}"; ValueData: ""; Flags: uninsdeletevalue
Root: HKCU; Subkey: "Software\Classes\.tif\OpenWithProgids"; ValueType: string; ValueName: "{#ProgIdImage}"; ValueData: ""; Flags: uninsdeletevalue
Root: HKCU; Subkey: "Software\Classes\.tiff\OpenWithProgids"; ValueType: string; ValueName: "{#ProgIdImage}"; ValueData: ""; Flags: uninsdeletevalue

; --- folders: "Open as CXR Viewer worklist" in Explorer's context menu
Root: HKCU; Subkey: "Software\Classes\Directory\shell\CXRViewer"; ValueType: string; ValueName: ""; ValueData: "Open as CXR Viewer worklist"; Flags: uninsdeletekey
Root: HKCU; Subkey: "Software\Classes\Directory\shell\CXRViewer"; ValueType: string; ValueName: "Icon"; ValueData: "{app}\cxrviewer.ico"
Root: HKCU; Subkey: "Software\Classes\Directory\shell\CXRViewer\command"; ValueType: string; ValueName: ""; ValueData: """{app}\{#AppExe}"" ""%1"""

[Run]
Filename: "{app}\{#AppExe}"; Description: "Start {#AppName} with the sample films"; Parameters: """{app}\_internal\resources\samples"""; Flags: nowait postinstall skipifsilent
