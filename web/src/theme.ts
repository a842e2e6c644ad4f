// The MarchProxy dark theme: dark grey surfaces, navy primary, gold accent. Text colours are chosen
// for WCAG AA contrast on both surfaces (≥ 4.5:1 for body text).
import { createTheme } from '@mui/material/styles';

export const brand = {
  bg: '#1E1E1E',
  surface: '#2C2C2C',
  navy: '#1E3A8A',
  navyDark: '#0F172A',
  gold: '#FFD700',
  goldDeep: '#FDB813',
};

export const theme = createTheme({
  palette: {
    mode: 'dark',
    background: { default: brand.bg, paper: brand.surface },
    // Navy fills with white text (10.4:1); on dark surfaces links/outlines use the gold secondary.
    primary: { main: brand.navy, dark: brand.navyDark, light: '#3B5BC0', contrastText: '#FFFFFF' },
    secondary: { main: brand.gold, dark: brand.goldDeep, contrastText: '#0F172A' },
    text: { primary: '#F3F4F6', secondary: '#C7CBD1' },
    error: { main: '#FF8A80' },
    warning: { main: brand.goldDeep },
    success: { main: '#6EE7A0' },
    info: { main: '#93C5FD' },
    divider: 'rgba(255,255,255,0.16)',
  },
  shape: { borderRadius: 8 },
  typography: { fontFamily: 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif' },
  components: {
    MuiAppBar: { styleOverrides: { root: { backgroundColor: brand.navyDark, backgroundImage: 'none' } } },
    MuiDrawer: { styleOverrides: { paper: { backgroundColor: brand.navyDark } } },
    // Navy text on the dark surfaces would fail contrast: controls default to the gold accent.
    MuiButton: { defaultProps: { disableElevation: true, color: 'secondary' } },
    MuiCheckbox: { defaultProps: { color: 'secondary' } },
    MuiTabs: { defaultProps: { textColor: 'secondary', indicatorColor: 'secondary' } },
    MuiLink: { styleOverrides: { root: { color: brand.gold } } },
    MuiTableCell: { styleOverrides: { head: { fontWeight: 600, color: '#E5E7EB' } } },
    MuiTextField: { defaultProps: { size: 'small', fullWidth: true, color: 'secondary' } },
  },
});
